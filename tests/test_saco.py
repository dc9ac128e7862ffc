"""SaCo (Wu et al., CVPR 2024) on hand-computed cases and against a plain restatement of the
paper's Algorithm 1 (loops over groups and pairs, float64)."""

from __future__ import annotations

import math

import pytest
import torch

from vitflow.metrics.context import ScoringContext
from vitflow.metrics.saco import coefficient, group_bounds, saco
from vitflow.registry import METRICS


def _pixel_model(weights: torch.Tensor):
    """Logits ``[0, sum_j w_j x_j]`` over the pixels of a (1, H, W) input: removing pixel ``j``
    (setting it to 0) lowers the class-1 logit by ``w_j x_j``, so the drops in probability are
    ordered as ``w_j x_j`` are."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        score = (x.flatten(1).double() * weights.flatten()).sum(1)
        return torch.stack([torch.zeros_like(score), score], 1)

    return forward


def test_coefficient_by_hand():
    # s = 3, 2, 1; drops ordered high, low, middle: pairs (1,2) +1, (1,3) +2, (2,3) -1 -> 2 / 4
    assert coefficient(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.5, 0.1, 0.3])) == pytest.approx(0.5)
    assert coefficient(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.5, 0.3, 0.1])) == 1.0
    assert coefficient(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.1, 0.3, 0.5])) == -1.0
    # equal drops count as agreeing (the paper's >=); a constant map has no pairs to weigh
    assert coefficient(torch.tensor([2.0, 1.0]), torch.tensor([0.2, 0.2])) == 1.0
    assert math.isnan(coefficient(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.3, 0.2, 0.1])))


def test_groups_are_equal_in_size_and_cover_every_pixel():
    assert group_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert group_bounds(224 * 224, 10)[-1][1] == 224 * 224
    sizes = [b - a for a, b in group_bounds(50_177, 10)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 50_177
    with pytest.raises(ValueError, match="groups must be between 1 and"):
        group_bounds(5, 6)


def test_saco_of_maps_that_agree_or_disagree_with_the_model():
    """Three pixels whose removal matters 3 : 1 : 2. A map ranking them 3 > 2 > 1 by salience
    agrees fully; the reverse disagrees fully; one that swaps the last two scores by hand."""
    x = torch.ones(1, 1, 1, 3)
    forward = _pixel_model(torch.tensor([3.0, 1.0, 2.0]))
    target = torch.tensor([1])
    agree = saco(forward, x, torch.tensor([[[3.0, 1.0, 2.0]]]), target, groups=3)
    assert agree["saco"].tolist() == [1.0]
    assert agree["salience"].tolist() == [[3.0, 2.0, 1.0]]  # groups in rank order
    assert saco(forward, x, torch.tensor([[[1.0, 3.0, 2.0]]]), target, groups=3)["saco"].tolist() == [-1.0]
    # map 3, 2, 1 on pixels 0, 1, 2: groups (pixel 0, s 3, drop by 3), (pixel 1, s 2, drop by 1),
    # (pixel 2, s 1, drop by 2): pairs +1, +2, -1 -> 0.5
    mixed = saco(forward, x, torch.tensor([[[3.0, 2.0, 1.0]]]), target, groups=3)["saco"]
    assert mixed.tolist() == [pytest.approx(0.5)]


def _restated(forward, x, maps, target, groups, fill=0.0):
    """Algorithm 1 of the paper, written out: rank the upsampled map's pixels, cut them into
    ``groups`` tenths, remove each tenth alone, compare every pair."""
    height, width = x.shape[-2:]
    big = torch.nn.functional.interpolate(maps[:, None].double(), size=(height, width), mode="bilinear",
                                          align_corners=False)[:, 0]  # fmt: skip
    out = []
    for b in range(len(x)):
        flat = big[b].flatten()
        order = sorted(range(len(flat)), key=lambda p: (-float(flat[p]), p))
        n = len(order)
        sizes = [n // groups + (1 if g < n % groups else 0) for g in range(groups)]  # equal to a pixel
        cuts = [sum(sizes[:g]) for g in range(groups + 1)]
        p0 = float(forward(x[b : b + 1]).double().softmax(1)[0, target[b]])
        s, d = [], []
        for g in range(groups):
            members = order[cuts[g] : cuts[g + 1]]
            removed = x[b].clone().reshape(x.shape[1], -1)
            removed[:, members] = fill
            p = float(forward(removed.reshape(1, *x.shape[1:])).double().softmax(1)[0, target[b]])
            s.append(sum(float(flat[m]) for m in members))
            d.append(p0 - p)
        total = weighted = 0.0
        for i in range(groups - 1):
            for j in range(i + 1, groups):
                weight = s[i] - s[j] if d[i] >= d[j] else -(s[i] - s[j])
                weighted += weight
                total += abs(weight)
        out.append(weighted / total)
    return out


def test_saco_equals_the_restated_algorithm_on_a_small_vit():
    from models import make_timm

    torch.manual_seed(0)
    model = make_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5).double().eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    maps = torch.rand(3, 4, 4, dtype=torch.float64)
    target = torch.tensor([0, 3, 4])
    with torch.no_grad():
        ours = saco(model, x, maps, target, groups=10)["saco"]
        theirs = _restated(model, x, maps, target, groups=10)
    assert ours.tolist() == pytest.approx(theirs, abs=1e-12)
    assert all(-1 <= v <= 1 for v in theirs) and len(set(theirs)) > 1


def test_saco_is_a_registered_faithfulness_metric():
    entry, _ = METRICS.lookup("saco")
    assert entry.info["higher_is_better"] and not entry.info["needs_mask"]
    x = torch.ones(2, 1, 1, 3)
    forward = _pixel_model(torch.tensor([3.0, 1.0, 2.0]))
    context = ScoringContext(forward=forward, x=x, target=torch.tensor([1, 1]))
    maps = torch.tensor([[[3.0, 1.0, 2.0]], [[1.0, 3.0, 2.0]]])
    # ten groups need ten pixels: a 1 x 3 input has three, so the registered metric refuses it
    with pytest.raises(ValueError, match="groups must be between 1 and the number of pixels 3"):
        METRICS.call("saco", maps, context)
    wide = ScoringContext(_pixel_model(torch.rand(30)), torch.ones(2, 1, 10, 3), torch.tensor([1, 1]))
    assert METRICS.call("saco", maps, wide).shape == (2,)


def test_a_score_without_a_value_is_null_in_the_records_and_left_out_of_the_means(tmp_path):
    """SaCo of a constant map is NaN: the record says null, the mean leaves it out, results.json
    stays valid JSON and results.md shows a dash where no image had a value."""
    import json

    from vitflow.runs.report import summarize

    scores = [{"daam": {"saco": 0.5}, "flat": {"saco": None}},
              {"daam": {"saco": None}, "flat": {"saco": None}}]  # fmt: skip
    records = [{"item": name, "target": 0, "correct": True, "scores": s, "per_block": {}}
               for name, s in zip("ab", scores, strict=True)]  # fmt: skip
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(tmp_path, ["daam", "flat"], ["saco"])
    assert summary["methods"]["daam"]["saco"] == 0.5
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["methods"]["flat"]["saco"] is None
    assert "| flat | – |" in (tmp_path / "results.md").read_text()
    assert "| daam | **0.500** |" in (tmp_path / "results.md").read_text()
