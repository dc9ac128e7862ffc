"""``vitflow bank import``: DINO's k-NN feature dumps become memory banks whose k-NN predictions
are DINO's own, and bad dumps are refused in one line."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from vitflow import KNNTarget, MemoryBank
from vitflow.cli import main


def dino_knn_predictions(train_features, train_labels, test_features, k, T, num_classes):
    """The predictions of DINO's ``eval_knn.knn_classifier`` (facebookresearch/dino), step by step:
    dot products with the (normalised) train features, top-k, one-hot of the neighbours' labels
    weighted by ``exp(similarity / T)``, summed per class, the best class."""
    similarity = test_features @ train_features.T
    distances, indices = similarity.topk(k, largest=True, sorted=True)
    neighbours = train_labels[indices]  # b k
    one_hot = torch.zeros(test_features.shape[0] * k, num_classes)
    one_hot.scatter_(1, neighbours.reshape(-1, 1), 1)
    weights = (distances / T).exp()
    probs = (one_hot.view(test_features.shape[0], k, num_classes) * weights[:, :, None]).sum(1)
    return probs.sort(1, True).indices[:, 0]


def write_dump(folder, n_train=300, n_test=60, dim=32, classes=7, normalised=True, seed=0):
    """A synthetic dump in DINO's layout: class clusters, labels 0..classes-1."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 2

    def split(n):
        labels = torch.randint(0, classes, (n,), generator=gen)
        labels[:classes] = torch.arange(classes)  # every class present
        feats = centres[labels] + torch.randn(n, dim, generator=gen) * 1.5
        return (torch.nn.functional.normalize(feats, dim=1) if normalised else feats * 3.0), labels

    train_f, train_l = split(n_train)
    test_f, test_l = split(n_test)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(train_f, folder / "trainfeat.pth")
    torch.save(test_f, folder / "testfeat.pth")
    torch.save(train_l, folder / "trainlabels.pth")
    torch.save(test_l, folder / "testlabels.pth")
    return train_f, train_l, test_f, test_l


@pytest.mark.parametrize("normalised", [True, False])
def test_imported_bank_gives_dino_knn_predictions(tmp_path, capsys, normalised):
    train_f, train_l, test_f, test_l = write_dump(tmp_path / "dump", normalised=normalised)
    out = tmp_path / "dino.bank"
    assert (
        main(
            [
                "bank",
                "import",
                str(tmp_path / "dump"),
                "--out",
                str(out),
                "--model",
                "vit_small_patch16_224.dino",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "300 x 32 float32, 7 classes" in captured.out
    assert ("L2-normalised" in captured.err) == (not normalised)
    bank = MemoryBank.load(out)
    assert bank.metadata["model"] == "vit_small_patch16_224.dino"
    assert bank.class_names == [f"class_{i}" for i in range(7)]
    reference_train = torch.nn.functional.normalize(train_f, dim=1)  # DINO normalises before dumping
    reference_test = torch.nn.functional.normalize(test_f, dim=1)
    for k in (1, 10, 20):
        ours = KNNTarget(bank, k=k, temperature=0.07)(test_f).target
        theirs = dino_knn_predictions(reference_train, train_l, reference_test, k, 0.07, 7)
        assert torch.equal(ours, theirs), k
    # the votes pick the true class most of the time on these clusters: the test is not vacuous
    assert (ours == test_l).float().mean() > 0.6


def test_import_test_split_files_names_and_half(tmp_path, capsys):
    write_dump(tmp_path / "dump", classes=4)
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n\nbird\nfish\n")
    out = tmp_path / "test.bank"
    assert main(["bank", "import", str(tmp_path / "dump"), "--split", "test", "--classes", str(names),
                 "--out", str(out), "--half"]) == 0  # fmt: skip
    bank = MemoryBank.load(out)
    assert len(bank) == 60 and bank.features.dtype == torch.float16
    assert bank.class_names == ["cat", "dog", "bird", "fish"]
    # --features/--labels with .npy files; a label with no rows leaves a class empty: refused
    np.save(tmp_path / "f.npy", torch.randn(20, 8).numpy())
    np.save(tmp_path / "l.npy", (np.arange(20) % 5).astype(np.int64))
    assert main(["bank", "import", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "l.npy"),
                 "--out", str(tmp_path / "npy.bank")]) == 0  # fmt: skip
    assert MemoryBank.load(tmp_path / "npy.bank").class_names == [f"class_{i}" for i in range(5)]
    np.save(tmp_path / "l.npy", np.array([0] * 10 + [2] * 10, dtype=np.int64))
    assert main(["bank", "import", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "l.npy"),
                 "--out", str(tmp_path / "gap.bank")]) == 2  # fmt: skip
    assert "no entries for 1 class(es), e.g. 'class_1'" in capsys.readouterr().err


def test_thousand_classes_get_imagenet_names(tmp_path):
    from vitflow.targets.bank_import import import_dump

    labels = torch.arange(1000).repeat(2)
    torch.save(torch.randn(2000, 16), tmp_path / "f.pth")
    torch.save(labels, tmp_path / "l.pth")
    bank, notes = import_dump(tmp_path / "f.pth", tmp_path / "l.pth")
    assert bank.num_classes == 1000 and bank.class_names[0].startswith("tench")
    assert any("ImageNet-1k" in n for n in notes)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "case, message",
    [
        ("mismatch", "has 300 rows but labels"),
        ("pickle", "not a tensor file vitflow reads safely"),
        ("dict", "holds a dict, not a tensor"),
        ("float_labels", "expected an integer"),
        ("missing", "no trainlabels.pth"),
        ("few_names", "only 2 class names"),
        ("nan", "NaN"),
    ],
)
def test_bad_dumps_are_refused_in_one_line(tmp_path, capsys, case, message):
    dump = tmp_path / "dump"
    write_dump(dump)
    extra = []
    if case == "mismatch":
        torch.save(torch.zeros(299, dtype=torch.long), dump / "trainlabels.pth")
    elif case == "pickle":
        (dump / "trainfeat.pth").write_bytes(pickle.dumps(Payload()))
    elif case == "dict":
        torch.save({"features": torch.randn(300, 32)}, dump / "trainfeat.pth")
    elif case == "float_labels":
        torch.save(torch.zeros(300), dump / "trainlabels.pth")
    elif case == "missing":
        (dump / "trainlabels.pth").unlink()
    elif case == "few_names":
        (tmp_path / "names.txt").write_text("a\nb\n")
        extra = ["--classes", str(tmp_path / "names.txt")]
    elif case == "nan":
        feats = torch.randn(300, 32)
        feats[3, 3] = float("nan")
        torch.save(feats, dump / "trainfeat.pth")
    out = tmp_path / "x.bank"
    assert main(["bank", "import", str(dump), "--out", str(out), *extra]) == 2
    captured = capsys.readouterr()
    assert "this must never run" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert not out.exists()
