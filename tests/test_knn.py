"""Self-supervised mode: k-NN weights (method.md section 5) against an independent float64
implementation, chunked search, memory banks on disk, end to end on a DINO-style backbone."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models import make_timm
from reference import reference_daam, relative_error

from vitflow import DAAM, FeatureWeightTarget, KNNTarget, MemoryBank, ReferenceTarget
from vitflow.cli import main
from vitflow.core.knn import dimension_weights
from vitflow.targets import BankError


def reference_weights(f, bank, labels, k, tau):
    """Section 5 written out with numpy float64 loops; ties in votes go to the lower class."""
    f = np.asarray(f, np.float64)
    f_hat = f / np.linalg.norm(f)
    sims = np.asarray(bank, np.float64) @ f_hat
    order = sorted(range(len(sims)), key=lambda i: (-sims[i], i))[:k]
    votes = {}
    for i in order:
        votes[int(labels[i])] = votes.get(int(labels[i]), 0.0) + math.exp(sims[i] / tau)
    best = max(votes.values())
    predicted = min(c for c, v in votes.items() if v == best)
    agreeing = [i for i in order if labels[i] == predicted]
    pi = np.mean([f_hat * np.asarray(bank[i], np.float64) for i in agreeing], axis=0)
    total = pi.sum()
    tilde = pi / abs(total) if total != 0 else pi
    if tilde.max() == tilde.min():
        return predicted, np.ones_like(tilde)
    return predicted, (tilde - tilde.min()) / (tilde.max() - tilde.min())


def make_bank(features, labels, classes, **metadata):
    features = F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    return MemoryBank(
        features, torch.as_tensor(labels, dtype=torch.long), [f"c{i}" for i in range(classes)], metadata
    )


def test_weights_match_float64_reference_on_random_banks():
    gen = torch.Generator().manual_seed(0)
    bank = make_bank(torch.randn(500, 32, generator=gen), torch.randint(0, 7, (500,), generator=gen), 7)
    queries = torch.randn(6, 32, generator=gen, dtype=torch.float64)
    scored = KNNTarget(bank, k=20, temperature=0.07, chunk_size=64)(queries)
    for i in range(6):
        predicted, w = reference_weights(
            queries[i].numpy(), bank.features.numpy(), bank.labels.numpy(), 20, 0.07
        )
        assert int(scored.target[i]) == predicted
        np.testing.assert_allclose(scored.weights[i].numpy(), w, rtol=1e-5, atol=1e-6)
        assert float(scored.scores[i]) == pytest.approx(float(np.dot(w, queries[i].numpy())), rel=1e-5)
    assert torch.allclose(scored.probabilities.sum(1), torch.ones(6, dtype=scored.probabilities.dtype))


def test_tied_votes_go_to_the_lower_class():
    e = torch.eye(4)
    # the first two are equally similar to e0; the others (far away) fill classes 0 and 2
    bank = make_bank(torch.stack([e[0] + e[1], e[0] + e[2], -e[0], e[3] - e[0]]), [3, 1, 0, 2], 4)
    scored = KNNTarget(bank, k=2)(e[0][None] * 2.5)
    assert int(scored.target[0]) == 1
    predicted, w = reference_weights(e[0].numpy() * 2.5, bank.features.numpy(), bank.labels.numpy(), 2, 0.07)
    assert predicted == 1
    np.testing.assert_allclose(scored.weights[0].numpy(), w, atol=1e-7)


def test_constant_pi_gives_all_ones_and_zero_sum_pi_is_not_divided():
    ones = torch.ones(1, 8)
    constant = KNNTarget(make_bank(ones, [0], 1), k=1)(ones * 3)
    assert torch.equal(constant.weights, torch.ones(1, 8))
    # pi = (0.5, -0.5): sum 0, so w~ = pi and w = (1, 0)
    zero_sum = KNNTarget(make_bank(torch.tensor([[1.0, -1.0]]), [0], 1), k=1)(torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(zero_sum.weights, torch.tensor([[1.0, 0.0]]))
    _, w = reference_weights([1.0, 1.0], [[2**-0.5, -(2**-0.5)]], [0], 1, 0.07)
    np.testing.assert_allclose(zero_sum.weights[0].numpy(), w, atol=1e-7)
    with pytest.raises(ValueError, match="agreeing neighbour"):
        dimension_weights(torch.ones(1, 2), torch.ones(1, 1, 2), torch.zeros(1, 1, dtype=torch.bool))


def test_chunked_top_k_equals_unchunked():
    gen = torch.Generator().manual_seed(1)
    bank = make_bank(torch.randn(1000, 16, generator=gen), torch.randint(0, 3, (1000,), generator=gen), 3)
    queries = F.normalize(torch.randn(5, 16, generator=gen), dim=1)
    whole = bank.topk(queries, 20, chunk_size=10_000)
    for chunk in (1, 7, 64, 999):
        chunked = bank.topk(queries, 20, chunk_size=chunk)
        assert torch.equal(chunked[1], whole[1]) and torch.allclose(chunked[0], whole[0])
    full = queries @ bank.features.T
    assert torch.equal(whole[1], full.topk(20, dim=1).indices)


def test_half_precision_bank_finds_the_same_neighbours(tmp_path):
    gen = torch.Generator().manual_seed(2)
    bank = make_bank(
        torch.randn(300, 24, generator=gen), torch.randint(0, 4, (300,), generator=gen), 4, model="m"
    )
    half = MemoryBank(bank.features.half(), bank.labels, bank.class_names, bank.metadata)
    half.save(tmp_path / "half.bank")
    loaded = MemoryBank.load(tmp_path / "half.bank")
    assert loaded.features.dtype == torch.float16 and loaded.metadata["model"] == "m"
    assert (tmp_path / "half.bank").stat().st_size < 300 * 24 * 2 + 4096
    queries = F.normalize(torch.randn(4, 24, generator=gen), dim=1)
    assert torch.equal(loaded.topk(queries, 5)[1], bank.topk(queries, 5)[1])


# -- end to end on a DINO-style backbone ---------------------------------------------------------
@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return make_timm("vit_small_patch16_224.dino", num_classes=0).double()


def test_knn_daam_equals_float64_reference_with_the_same_weights(backbone):
    gen = torch.Generator().manual_seed(3)
    bank_x = torch.randn(40, 3, 64, 64, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        feats = backbone(bank_x)
    bank = make_bank(feats.float(), torch.arange(40) % 4, 4, model="vit_small_patch16_224.dino")
    x = torch.randn(3, 3, 64, 64, generator=gen, dtype=torch.float64)
    with DAAM(backbone) as daam:
        result = daam(x, target=KNNTarget(bank, k=10))
    assert (
        result.feature_weights.shape == (3, 384)
        and result.target.tolist() == result.probabilities.argmax(1).tolist()
    )
    w = result.feature_weights.double()
    ref = reference_daam(backbone, x, rho="identity", score_fn=lambda out: (w * out).sum(1))
    assert relative_error(result.block_maps, ref.block_maps) <= 1e-5
    # rho = identity is the default for feature targets; relu would give other maps
    with DAAM(backbone, rho="relu") as daam:
        relu = daam(x, target=KNNTarget(bank, k=10))
    assert relative_error(relu.block_maps, ref.block_maps) > 1e-3


def test_feature_weight_and_reference_targets(backbone):
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    w = torch.rand(384, dtype=torch.float64)
    with DAAM(backbone) as daam:
        given = daam(x, target=FeatureWeightTarget(w))
        refs = torch.randn(5, 384)
        referenced = daam(x, target=ReferenceTarget(refs))
    ref = reference_daam(backbone, x, rho="identity", score_fn=lambda out: (w * out).sum(1))
    assert relative_error(given.block_maps, ref.block_maps) <= 1e-5
    assert given.target.tolist() == [-1, -1]
    with torch.no_grad():
        f_hat = F.normalize(backbone(x).float(), dim=1)
    expected = dimension_weights(f_hat, F.normalize(refs, dim=1).expand(2, -1, -1))
    torch.testing.assert_close(referenced.feature_weights, expected)


def test_bank_problems_are_refused_clearly(tmp_path, backbone):
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    small = make_bank(torch.randn(10, 16), torch.arange(10) % 2, 2)
    with (
        DAAM(backbone) as daam,
        pytest.raises(ValueError, match="16-dimensional features but the model outputs 384"),
    ):
        daam(x, target=KNNTarget(small, k=3))
    other = make_bank(torch.randn(10, 384), torch.arange(10) % 2, 2, model="vit_base_patch16_224.dino")
    with (
        DAAM(backbone) as daam,
        pytest.raises(BankError, match="built with model 'vit_base_patch16_224.dino'"),
    ):
        daam(x, target=KNNTarget(other, k=3))
    with pytest.raises(BankError, match="no entries for 1 class"):
        make_bank(torch.randn(4, 8), [0, 0, 2, 2], 3)
    (tmp_path / "corrupt.bank").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(BankError, match="unreadable or corrupt"):
        MemoryBank.load(tmp_path / "corrupt.bank")
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(BankError, match="not a vitflow memory bank"):
        MemoryBank.load(tmp_path / "other.safetensors")
    with pytest.raises(BankError, match="no such file"):
        MemoryBank.load(tmp_path / "missing.bank")


# -- building ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    assert main(["scenes", "--out", str(root), "--n", "24", "--seed", "9", "--size", "64"]) == 0
    return root / "images"


def test_bank_build_resumes_without_recomputing_finished_chunks(tmp_path, scene_folder):
    from vitflow.data import Preprocessing
    from vitflow.data.folders import list_image_folder
    from vitflow.runs.bank_build import build_bank

    model = make_timm("vit_tiny_patch16_224", num_classes=0).float()
    images = list_image_folder(scene_folder)
    preprocessing = Preprocessing.for_timm(model)
    calls = []

    def counting(image):
        calls.append(1)
        if crash and len(calls) == 13:
            raise KeyboardInterrupt  # interrupted in the middle of the third chunk (6 images a chunk)
        return preprocessing(image)

    crash = True
    with pytest.raises(KeyboardInterrupt):
        build_bank(model, counting, images, tmp_path / "b.bank", chunk_images=5, batch_size=2, progress=False)
    assert not (tmp_path / "b.bank").exists()
    finished = sorted(p.name for p in (tmp_path / "b.bank.parts").glob("chunk_*"))
    assert [name[:12] for name in finished] == ["chunk_000000", "chunk_000001"]  # + a key of their images
    assert all(name.endswith(".safetensors") for name in finished)
    crash, calls[:] = False, []
    bank = build_bank(
        model, counting, images, tmp_path / "b.bank", chunk_images=5, batch_size=2, progress=False
    )
    assert len(calls) == 24 - 12  # chunk_images=5 is rounded up to whole batches of 2: 6 per chunk
    assert not (tmp_path / "b.bank.parts").exists()
    fresh = build_bank(
        model, counting, images, tmp_path / "c.bank", chunk_images=100, batch_size=8, progress=False
    )
    torch.testing.assert_close(bank.features, fresh.features)
    assert torch.equal(bank.labels, torch.tensor(images.labels))


def test_bank_build_and_explain_commands(tmp_path, scene_folder, capsys):
    bank_file = tmp_path / "demo.bank"
    (scene_folder / "striped_disc" / "broken.png").write_bytes(b"nope")
    code = main(["bank", "build", "--data", str(scene_folder), "--out", str(bank_file), "--half", "--quiet"])
    (scene_folder / "striped_disc" / "broken.png").unlink()
    assert code == 1  # one unreadable image, reported and left out
    captured = capsys.readouterr()
    assert "broken.png: not an image file" in captured.err and "24 features of dimension 192" in captured.out
    bank = MemoryBank.load(bank_file)
    assert bank.features.dtype == torch.float16 and len(bank) == 24 and bank.metadata["skipped_images"] == 1
    assert bank.metadata["model"] == "vitflow-demo-vit" and bank.metadata["preprocessing"]["input_size"] == [
        3,
        96,
        96,
    ]
    assert main(["bank", "info", str(bank_file)]) == 0
    assert "24 x 192 float16" in capsys.readouterr().out

    image = next(scene_folder.glob("*/*.png"))
    assert (
        main(["explain", str(image), "--bank", str(bank_file), "--k", "5", "--out", str(tmp_path / "run")])
        == 0
    )
    manifest = json.loads((tmp_path / "run" / image.stem / "manifest.json").read_text())
    assert manifest["rho"] == "identity" and manifest["bank"] == str(bank_file)
    assert manifest["target"]["name"] in bank.class_names
    assert sum(entry["probability"] for entry in manifest["top5"]) == pytest.approx(1.0, abs=1e-6)
    assert (
        main(["explain", str(image), "--bank", str(bank_file), "--target", "1", "--out", str(tmp_path / "x")])
        == 2
    )

    # a bank smaller than the default k = 20: the default shrinks to the bank, and says so; an
    # explicit --k larger than the bank is refused in one line
    first = torch.tensor([int((bank.labels == c).nonzero()[0]) for c in range(bank.num_classes)])
    small = dataclasses.replace(bank, features=bank.features[first], labels=bank.labels[first])
    small.save(tmp_path / "small.bank")
    capsys.readouterr()
    args = ["explain", str(image), "--bank", str(tmp_path / "small.bank")]
    assert main([*args, "--out", str(tmp_path / "small")]) == 0
    assert "the bank holds 8 features, so k-NN uses k = 8 (default 20)" in capsys.readouterr().err
    assert main([*args, "--k", "9", "--out", str(tmp_path / "k9")]) == 2
    assert "k must be between 1 and the bank size 8, got 9" in capsys.readouterr().err
    assert not (tmp_path / "k9").exists()


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (the bank moves to the model's device)"
)
def test_bank_moves_to_a_cuda_device_with_room_and_gives_the_same_weights():
    gen = torch.Generator().manual_seed(4)
    bank = make_bank(torch.randn(2000, 64, generator=gen), torch.arange(2000) % 5, 5)
    queries = torch.randn(3, 64, generator=gen)
    on_cpu = KNNTarget(bank, k=10, keep_on_device=False)(queries)
    target = KNNTarget(bank, k=10)
    on_gpu = target(queries.cuda())
    assert target.bank.features.is_cuda
    torch.testing.assert_close(on_gpu.weights.cpu(), on_cpu.weights, rtol=1e-4, atol=1e-5)
    assert torch.equal(on_gpu.target.cpu(), on_cpu.target)
