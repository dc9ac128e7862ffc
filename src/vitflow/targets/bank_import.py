"""Memory banks from feature dumps other tools write (``vitflow bank import``).

DINO's ``eval_knn.py --dump_features DIR`` saves ``trainfeat.pth`` ``(N, D)`` (L2-normalised),
``trainlabels.pth`` ``(N,)`` and the ``test*`` counterparts with ``torch.save``; the authors'
self-supervised DAAM code reads exactly these as its memory bank. DINOv2's k-NN evaluation and
other tools write the same kind of pair. Files are read with ``torch.load(weights_only=True)``
(or as ``.npy`` / ``.safetensors``): a dump holding anything but a tensor is refused, never
unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vitflow.targets.bank import BankError, MemoryBank

#: DINO's dump file names, by split
DUMP_FILES = {"train": ("trainfeat.pth", "trainlabels.pth"), "test": ("testfeat.pth", "testlabels.pth")}


def read_tensor(path: str | os.PathLike, what: str) -> torch.Tensor:
    """One tensor from a ``torch.save`` file (weights-only), ``.npy`` or single-tensor ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise BankError(f"{what} {path}: no such file")
    try:
        if path.suffix == ".npy":
            import numpy as np

            value = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1:
                raise BankError(
                    f"{what} {path}: holds {len(tensors)} tensors ({', '.join(tensors)}), expected one"
                )
            value = next(iter(tensors.values()))
        else:
            value = torch.load(path, map_location="cpu", weights_only=True)
    except BankError:
        raise
    except Exception as error:  # torch raises several types for unsafe or corrupt pickles
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BankError(
            f"{what} {path}: not a tensor file vitflow reads safely (weights-only torch.load, .npy, "
            f".safetensors): {first[:200]}"
        ) from None
    if not isinstance(value, torch.Tensor):
        raise BankError(
            f"{what} {path}: holds a {type(value).__name__}, not a tensor; pass the file of one tensor"
        )
    return value


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines ignored), or a JSON list."""
    import json

    path = Path(path)
    if not path.is_file():
        raise BankError(f"class names {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BankError(f"class names {path}: a JSON file must hold a list of strings")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_names() -> list[str] | None:
    """ImageNet-1k's class descriptions in index order (from timm), or ``None`` without timm."""
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        return [info.index_to_description(i) for i in range(info.num_classes())]
    except Exception:  # noqa: BLE001 - names are a nicety; generic names are used without them
        return None


def import_dump(
    features: str | os.PathLike,
    labels: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    model_name: str | None = None,
    half: bool = False,
) -> tuple[MemoryBank, list[str]]:
    """A bank from a features file ``(N, D)`` and a labels file ``(N,)``.

    Features are L2-normalised when they are not (DINO's dumps already are). Without
    ``class_names``: ImageNet-1k's names when the labels span 1,000 classes, else ``class_0`` ...
    Returns the bank and notes on what was done (for the command line to print).
    """
    feats = read_tensor(features, "features")
    labs = read_tensor(labels, "labels")
    notes: list[str] = []
    if feats.ndim != 2 or not feats.dtype.is_floating_point:
        raise BankError(
            f"features {features}: expected a float (N, D) tensor, got {tuple(feats.shape)} {feats.dtype}"
        )
    if labs.ndim != 1 or labs.dtype.is_floating_point or labs.dtype == torch.bool:
        raise BankError(
            f"labels {labels}: expected an integer (N,) tensor, got {tuple(labs.shape)} {labs.dtype}"
        )
    if feats.shape[0] != labs.shape[0]:
        raise BankError(
            f"features {features} has {feats.shape[0]} rows but labels {labels} has {labs.shape[0]}; "
            "pass the features and labels of the same split"
        )
    if feats.shape[0] == 0:
        raise BankError(f"features {features}: empty")
    if not torch.isfinite(feats).all():
        raise BankError(f"features {features}: contains NaN or infinite values")
    labs = labs.to(torch.int64)
    if int(labs.min()) < 0:
        raise BankError(f"labels {labels}: negative labels ({int(labs.min())}); labels must be 0..C-1")
    feats = feats.float()
    norms = feats.norm(dim=1)
    if (norms - 1).abs().max() > 1e-3:
        if bool((norms == 0).any()):
            raise BankError(f"features {features}: some rows are all zeros and cannot be normalised")
        feats = torch.nn.functional.normalize(feats, dim=1)
        notes.append("features were not unit-norm: L2-normalised them (as DINO's k-NN evaluation does)")
    count = int(labs.max()) + 1
    if class_names is None:
        names = imagenet_names() if count == 1000 else None
        if names is not None:
            notes.append("1,000 classes: named them with ImageNet-1k's class names")
        class_names = names or [f"class_{i}" for i in range(count)]
    elif len(class_names) < count:
        raise BankError(f"labels go up to {count - 1} but only {len(class_names)} class names were given")
    metadata = {"source": {"features": str(features), "labels": str(labels)}, "imported": True}
    if model_name:
        metadata["model"] = model_name
    bank = MemoryBank(feats.half() if half else feats, labs, list(class_names), metadata)
    return bank, notes


def dump_files(folder: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """The features and labels files of ``split`` in a DINO dump folder."""
    folder = Path(folder)
    feats, labs = (folder / name for name in DUMP_FILES[split])
    missing = [p.name for p in (feats, labs) if not p.is_file()]
    if missing:
        raise BankError(
            f"{folder}: no {' or '.join(missing)} (DINO's eval_knn.py --dump_features writes "
            f"{', '.join(n for pair in DUMP_FILES.values() for n in pair)}); or pass --features and --labels"
        )
    return feats, labs
