"""``--protocol chefer``: Chefer, Gur & Wolf's segmentation and perturbation numbers, by hand on
tiny cases, against a re-statement of their evaluation code on random ones, and end to end on a
synthetic ``gtsegs_ijcv.mat`` and an ImageFolder tree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from vitflow.cli import main
from vitflow.data.gtsegs import GtSegs, write_gtsegs
from vitflow.metrics.protocol import auc, normalised_maps, perturbation_hits, segmentation_counts


def _totals(counts):
    correct, labeled = counts["correct"].sum().item(), counts["labeled"].sum().item()
    inter, union = counts["inter"].sum(0).double(), counts["union"].sum(0).double()
    return correct / labeled, (inter / union).tolist()


def test_segmentation_numbers_by_hand():
    # image A: map 0..15 row by row -> foreground (above the mean 0.5) is the bottom two rows;
    # mask: the right half. Image B: a constant map (all background); mask: the top-left 2 x 2.
    maps = torch.stack([torch.arange(16.0).reshape(4, 4), torch.full((4, 4), 3.0)])
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :, 2:] = True
    masks[1, :2, :2] = True
    counts = segmentation_counts(normalised_maps(maps, (4, 4)), masks)
    assert counts["correct"].tolist() == [8, 12] and counts["labeled"].tolist() == [16, 16]
    assert counts["inter"].tolist() == [[4, 4], [12, 0]]  # (background, foreground)
    assert counts["union"].tolist() == [[12, 12], [16, 4]]
    accuracy, (iou_bg, iou_fg) = _totals(counts)
    # summed over the dataset: 20/32 correct; IoU 16/28 (background), 4/16 (foreground)
    assert accuracy == pytest.approx(20 / 32)
    assert iou_bg == pytest.approx(16 / 28) and iou_fg == pytest.approx(4 / 16)
    assert (iou_bg + iou_fg) / 2 == pytest.approx(0.41071, abs=1e-5)
    # (per image and then averaged, as vitflow's own protocol does, mIoU would be 0.354)


def test_ap_over_foreground_and_background_by_hand():
    # a 1 x 2 map [0, 1]; both channels scored: background 1 - map, foreground map
    unit = torch.tensor([[[0.0, 1.0]]])
    right = segmentation_counts(unit, torch.tensor([[[False, True]]]))["ap"]
    wrong = segmentation_counts(unit, torch.tensor([[[True, False]]]))["ap"]
    assert right.tolist() == [1.0]  # the two top-scored entries are the two positives
    assert wrong.tolist() == [0.5]  # top two: no positive; all four: 2 of 4, recall 1


def _their_counts(unit: np.ndarray, mask: np.ndarray):
    """Their utils/metrices.py on one image: batch_pix_accuracy, batch_intersection_union
    (labels +1, histograms over (1, 2)) and get_ap_scores (scikit-learn's AP over both channels)."""
    res_1 = (unit > unit.mean()).astype(np.float32)
    res_0 = (unit <= unit.mean()).astype(np.float32)
    predict = np.stack([res_0, res_1]).argmax(0) + 1
    target = mask.astype(np.int64) + 1
    correct, labeled = np.sum((predict == target) * (target > 0)), np.sum(target > 0)
    predict = predict * (target > 0)
    intersection = predict * (predict == target)
    area_inter, _ = np.histogram(intersection, bins=2, range=(1, 2))
    area_pred, _ = np.histogram(predict, bins=2, range=(1, 2))
    area_lab, _ = np.histogram(target, bins=2, range=(1, 2))
    one_hot = np.stack([mask == 0, mask == 1]).astype(np.int64).reshape(-1)
    ap = average_precision_score(one_hot, np.stack([1 - unit, unit]).reshape(-1))
    return correct, labeled, area_inter, area_pred + area_lab - area_inter, ap


def test_segmentation_counts_equal_their_code_on_random_maps():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 7, 7, generator=gen) ** 3
    masks = torch.rand(5, 28, 28, generator=gen) > 0.6
    unit = normalised_maps(maps, (28, 28))
    ours = segmentation_counts(unit, masks)
    for i in range(5):
        correct, labeled, inter, union, ap = _their_counts(unit[i].numpy(), masks[i].numpy())
        assert ours["correct"][i] == correct and ours["labeled"][i] == labeled
        assert ours["inter"][i].tolist() == inter.tolist() and ours["union"][i].tolist() == union.tolist()
        assert ours["ap"][i].item() == pytest.approx(ap, abs=1e-12)


def test_upsampling_is_theirs():
    """``F.interpolate(scale_factor=16, mode='bilinear')`` then min-max, as their code does."""
    maps = torch.rand(2, 14, 14, generator=torch.Generator().manual_seed(1))
    theirs = torch.nn.functional.interpolate(maps[:, None], scale_factor=16, mode="bilinear")[:, 0]
    theirs = torch.stack([(t - t.min()) / (t.max() - t.min()) for t in theirs])
    torch.testing.assert_close(normalised_maps(maps, (224, 224)), theirs)


def test_perturbation_hits_and_auc_by_hand():
    """A 10 x 10 image whose 'class 1' logit is the share of the 50 most relevant pixels still
    intact (class 0 logit 0.5). Positive perturbation removes them first: 40/50, 30/50 intact
    after 10% and 20%, then 20/50 < 0.5; negative removes the other 50 first."""
    vis = torch.arange(100.0).reshape(1, 10, 10) / 99
    x = torch.ones(1, 3, 10, 10)
    top = (vis >= 50 / 99)[:, None].expand(1, 3, 10, 10)

    def forward(images):
        intact = ((images != 0) & top).flatten(1).sum(1) / (3 * 50)
        return torch.stack([torch.full_like(intact, 0.5), intact], dim=1)

    black = torch.zeros(3)
    positive = perturbation_hits(forward, x, vis, torch.tensor([1]), black, positive=True)
    negative = perturbation_hits(forward, x, vis, torch.tensor([1]), black, positive=False)
    assert positive.int().tolist() == [[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]]
    assert negative.int().tolist() == [[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]]
    # trapz over x = 0, 0.1, ..., 0.9, times 100, not divided by the range
    assert auc(positive[0].float().tolist()) == pytest.approx(25.0)
    assert auc(negative[0].float().tolist()) == pytest.approx(75.0)
    assert auc([1.0] * 10) == pytest.approx(90.0)


def _scenes(count, seed=5):
    from vitflow.data.scenes import generate_scene

    return [generate_scene(seed, i) for i in range(count)]


def test_gtsegs_file_round_trip_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (20, 30, 3), dtype=np.uint8),
        rng.integers(0, 255, (41, 25, 3), dtype=np.uint8),
    ]
    masks = [rng.random((20, 30)) > 0.5, rng.random((41, 25)) > 0.5]
    segs = GtSegs(write_gtsegs(tmp_path / "g.mat", images, masks))
    assert len(segs) == 2
    for i in range(2):
        assert np.array_equal(np.asarray(segs.image(i)), images[i]) and np.array_equal(segs.mask(i), masks[i])
    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(ValueError, match="not an ImageNet-segmentation file"):
        GtSegs(tmp_path / "bad.mat")


def test_evaluate_protocol_chefer_on_a_gtsegs_file(tmp_path, capsys):
    scenes = _scenes(5)
    mat = write_gtsegs(tmp_path / "gtsegs_ijcv.mat", [s.image for s in scenes], [s.masks[0] for s in scenes])
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(mat), "--protocol", "chefer", "--methods", "daam,raw_attention",
            "--out", str(out), "--batch-size", "2", "--chunk", "2", "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "pixel acc." in printed and "mIoU" in printed and "AUC" not in printed
    )  # no labels: no perturbation
    summary = json.loads((out / "results.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert summary["items"] == len(records) == 5
    for method in ("daam", "raw_attention"):
        rows = [r["methods"][method] for r in records]
        inter = np.sum([r["inter"] for r in rows], axis=0)
        union = np.sum([r["union"] for r in rows], axis=0)
        row = summary["methods"][method]
        assert row["pixel_accuracy"] == pytest.approx(
            sum(r["correct"] for r in rows) / sum(r["labeled"] for r in rows)
        )
        assert row["miou"] == pytest.approx(float(np.mean(inter / union)))
        assert row["map"] == pytest.approx(float(np.mean([r["ap"] for r in rows])))
        assert 0 < row["pixel_accuracy"] < 1 and 0 < row["miou"] < 1
    # one image recomputed independently: the demo model explains its predicted class
    from vitflow import DAAM
    from vitflow.models.demo import load_demo_model

    model, preprocessing = load_demo_model()
    size = tuple(preprocessing.config["input_size"][-2:])
    image = Image.fromarray(scenes[3].image).resize(size[::-1], Image.BILINEAR)
    x = (
        (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
        - torch.tensor(preprocessing.mean)[:, None, None]
    ) / torch.tensor(preprocessing.std)[:, None, None]  # noqa: E501
    with DAAM(model) as daam:
        result = daam(x[None])
    assert records[3]["predicted"] == int(result.target[0])
    mask = (
        np.asarray(Image.fromarray(scenes[3].masks[0].astype(np.uint8)).resize(size[::-1], Image.NEAREST)) > 0
    )
    expected = segmentation_counts(normalised_maps(result.final, size), torch.from_numpy(mask)[None])
    assert abs(records[3]["methods"]["daam"]["correct"] - int(expected["correct"][0])) <= 0.002 * mask.size
    # a rerun resumes (nothing recomputed) and gives the same table
    before = (out / "results.md").read_text()
    assert main(args) == 0
    assert (out / "results.md").read_text() == before


def test_evaluate_protocol_chefer_perturbation_on_an_image_folder(tmp_path, capsys):
    from vitflow.data.scenes import CLASS_NAMES

    scenes = _scenes(6, seed=9)
    for i, scene in enumerate(scenes):
        folder = tmp_path / "data" / CLASS_NAMES[scene.label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(folder / f"{i}.png")
    (tmp_path / "data" / CLASS_NAMES[scenes[0].label] / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "eval"
    code = main(["evaluate", "--data", str(tmp_path / "data"), "--protocol", "chefer", "--methods", "daam",
                 "--out", str(out), "--batch-size", "4", "--quiet", "--device", "cpu"])  # fmt: skip
    assert code == 1  # the broken file is reported; the rest evaluated
    assert "broken.jpg" in capsys.readouterr().err
    summary = json.loads((out / "results.json").read_text())
    row = summary["methods"]["daam"]
    assert summary["items"] == 6 and "pixel_accuracy" not in row
    for sign in ("positive", "negative"):
        accuracy = row[f"{sign}_accuracy"]
        assert len(accuracy) == 10 and accuracy[0] == pytest.approx(summary["accuracy"])
        assert row[f"{sign}_auc"] == pytest.approx(auc(accuracy)) and 0 <= row[f"{sign}_auc"] <= 90


def test_protocol_chefer_refuses_options_it_does_not_use(tmp_path, capsys):
    mat = write_gtsegs(tmp_path / "g.mat", [s.image for s in _scenes(1)], [s.masks[0] for s in _scenes(1)])
    assert main(["evaluate", "--data", str(mat), "--protocol", "chefer", "--metrics", "energy", "--out",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert "--metrics do not apply to --protocol chefer" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(mat), "--out", str(tmp_path / "o")]) == 2
    assert "no class labels" in capsys.readouterr().err
