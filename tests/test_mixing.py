"""The mixing-aware DAAM variants and the label-free block weighting, against an explicit float64
computation (explicit attention matrices, explicit products), plus their defining properties."""

from __future__ import annotations

import math

import pytest
import torch
from models import make_timm
from reference import reference_daam, relative_error

from vitflow.adapters import resolve_adapter
from vitflow.methods.mixing import concentration_weights, mixed_block_maps
from vitflow.methods.run import applicable_methods, explain_all


def _explicit_variants(ref, prefix, grid):
    """The variants' flows (the map after every block), with explicit loops over blocks in float64."""
    batch, blocks, tokens = ref.relevance.shape
    eye = torch.eye(tokens, dtype=torch.float64)
    results = {}
    for name in ("daam_rollout", "daam_generic"):
        m = eye.expand(batch, tokens, tokens).clone()
        r = m.clone()  # generic attention's unnormalised relevance
        total = torch.zeros(batch, tokens, dtype=torch.float64)
        flow = []
        for b in range(blocks):
            u = ref.relevance[:, b].clamp_min(0)
            total = total + torch.stack([u[i] @ m[i] for i in range(batch)])  # relevance to input tokens
            flow.append(total[:, prefix:].reshape(batch, *grid))
            a = ref.attention[b].mean(dim=1)
            if name == "daam_rollout":
                step = 0.5 * a + 0.5 * eye
                step = step / step.sum(-1, keepdim=True)
                m = step @ m
            else:
                r = r + (ref.attention_grad[b] * ref.attention[b]).clamp_min(0).mean(dim=1) @ r
                m = r / r.sum(-1, keepdim=True)
        results[name] = torch.stack(flow, dim=1)
    return results


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_mixing_variants_match_an_explicit_float64_computation(name):
    model = make_timm(name).double()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    target = torch.tensor([1, 3])
    ref = reference_daam(model, x, target=target)
    adapter = resolve_adapter(model)
    prefix, grid = adapter.prefix_tokens(), (4, 4)
    maps = explain_all(adapter, x, target, ["daam", "daam_rollout", "daam_generic"])
    expected = _explicit_variants(ref, prefix, grid)
    for variant in ("daam_rollout", "daam_generic"):
        assert expected[variant].abs().max() > 0
        assert relative_error(maps[f"{variant}/flow"], expected[variant]) <= 1e-6, variant  # every block
        assert torch.equal(maps[variant], maps[f"{variant}/flow"][:, -1])  # the map is the flow's last
        assert relative_error(maps[variant], maps["daam"]) > 1e-3  # the mixing changes the map
    assert relative_error(maps["daam/flow"], ref.block_maps.cumsum(dim=1)) <= 1e-6


def test_block_one_is_plain_daam_and_relevance_is_moved_not_made():
    torch.manual_seed(0)
    relevance = torch.randn(2, 3, 1 + 16, dtype=torch.float64)
    mixing = [torch.eye(17, dtype=torch.float64).expand(2, 17, 17)]
    for _ in range(2):
        m = torch.rand(2, 17, 17, dtype=torch.float64)
        mixing.append(m / m.sum(-1, keepdim=True))
    maps = mixed_block_maps(relevance, mixing, 1, (4, 4))
    torch.testing.assert_close(maps[:, 0], relevance[:, 0, 1:].clamp_min(0).reshape(2, 4, 4))
    full = mixed_block_maps(relevance, mixing, 0, (1, 17))  # prefix kept: the total mass is preserved
    torch.testing.assert_close(full.flatten(2).sum(-1), relevance.clamp_min(0).sum(-1))


def test_concentration_weights_by_hand():
    uniform = torch.ones(1, 1, 4, 4)
    single = torch.zeros(1, 1, 4, 4)
    single[0, 0, 1, 2] = 5.0
    half = torch.zeros(1, 1, 4, 4)
    half[0, 0, :2] = 1.0  # 8 of 16 patches: entropy log 8 / log 16 = 3/4
    weights = concentration_weights(torch.cat([uniform, single, half, torch.zeros(1, 1, 4, 4)], dim=1))
    assert weights[0].tolist() == pytest.approx([0.0, 1.0, 1 - math.log(8) / math.log(16), 0.0])


def test_mixing_variants_are_left_out_for_class_attention_models():
    model = make_timm("cait_xxs24_224", img_size=64)
    kept, notes = applicable_methods(resolve_adapter(model), ["daam", "daam_rollout", "daam_generic",
                                                              "daam_concentration"])  # fmt: skip
    assert kept == ["daam", "daam_concentration"] and "daam_rollout" in notes[0]


def test_evaluate_scores_every_variant_block_by_block(tmp_path, capsys):
    """``--per-block-methods``: each variant's map after every block is scored; after the last block
    it is the variant's own map, so its last per-block score equals its score."""
    import json

    from vitflow.cli import main

    main(["scenes", "--out", str(tmp_path / "s"), "--n", "6", "--seed", "4"])
    args = ["evaluate", "--data", str(tmp_path / "s"), "--metrics", "pointing_game,energy",
            "--per-block-metrics", "pointing_game,energy", "--batch-size", "4", "--quiet"]  # fmt: skip
    methods = "daam,daam_rollout,daam_concentration,daam_from_3,raw_attention"
    flows = {"daam", "daam_rollout", "daam_concentration", "daam_from_3"}
    code = main([*args, "--out", str(tmp_path / "e"), "--methods", methods,
                 "--per-block-methods", ",".join(sorted(flows))])  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "e" / "records.jsonl").read_text().splitlines()]
    for r in records:
        assert set(r["per_block"]) == flows
        for m, blocks in r["per_block"].items():
            assert len(blocks) == 6  # the demo ViT's blocks
            assert blocks[-1]["energy"] == pytest.approx(r["scores"][m]["energy"], abs=1e-9)
        # before block 3 daam_from_3 has accumulated nothing: no score, not a zero
        assert [blocks["energy"] for blocks in r["per_block"]["daam_from_3"][:2]] == [None, None]
        assert r["per_block"]["daam_from_3"][2]["energy"] is not None
    summary = json.loads((tmp_path / "e" / "results.json").read_text())
    assert set(summary["per_block"]) == flows
    assert summary["per_block"]["daam_from_3"]["energy"][:2] == [None, None]
    assert summary["per_block"]["daam_from_3"]["energy"][-1] == pytest.approx(
        summary["methods"]["daam_from_3"]["energy"]
    )
    assert summary["daam_per_block"] == summary["per_block"]["daam"]
    assert summary["per_block"]["daam_rollout"]["energy"] != summary["per_block"]["daam"]["energy"]
    assert (tmp_path / "e" / "per_block.png").stat().st_size > 10_000
    capsys.readouterr()
    refused = {"raw_attention": "no map after each block", "daam_generic": "not among the evaluated"}
    for bad, says in refused.items():
        out = str(tmp_path / bad)
        assert main([*args, "--out", out, "--methods", methods, "--per-block-methods", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / bad).exists()
