"""Building a memory bank from labelled images: batched, resumable, atomic.

Features are computed chunk by chunk (``chunk_images`` images per chunk). Each finished chunk is
saved under ``OUT.parts/`` with a ``state.json`` that fingerprints the model and the image list,
so an interrupted build picks up at the first missing chunk. The bank file appears only when
every chunk is done; then the parts are removed. Unreadable images are reported and left out.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vitflow.adapters import Adapter, resolve_adapter
from vitflow.data.folders import LabelledImages
from vitflow.data.images import ImageLoadError, load_image
from vitflow.files import write_json_atomic
from vitflow.progress import Progress
from vitflow.targets.bank import MemoryBank, model_identity
from vitflow.version import __version__


@torch.no_grad()
def compute_features(model: nn.Module, x: torch.Tensor, adapter: Adapter | None = None) -> torch.Tensor:
    """The feature ``f`` a bank stores for a batch: the backbone's output (read through its
    adapter, e.g. a transformers model's ``pooler_output``), L2-normalised, ``(B, D)``."""
    adapter = adapter or resolve_adapter(model)
    try:
        features = adapter.forward(x)
    except TypeError as error:
        raise ValueError(
            f"{error}; a memory bank needs (B, D) features: create the model with num_classes=0"
        ) from None
    return F.normalize(features.float(), dim=1)


def build_bank(
    model: nn.Module,
    preprocess: Callable,
    images: LabelledImages,
    out: str | os.PathLike,
    *,
    preprocessing_config: dict | None = None,
    model_name: str | None = None,
    batch_size: int = 64,
    chunk_images: int = 4096,
    half: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
) -> MemoryBank:
    """Compute, store and return the bank of ``images`` for ``model`` (headless, ``(B, D)`` output).

    Args:
        preprocess: PIL image -> ``(3, H, W)`` tensor (the model's own preprocessing).
        images: the labelled image list.
        out: the bank file; ``out.parts/`` holds finished chunks while building.
        model_name: recorded in the bank and checked when it is used (default: the model's identity).
        half: store features in float16 (half the memory; similarities change by ~1e-3).
        on_error: called with a one-line message per unreadable image (default: print to stderr).
    """
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    if not out.parent.is_dir() and out.parent.exists():
        raise ValueError(f"cannot write the bank {out}: {out.parent} is not a folder")
    name = model_name or model_identity(model)
    state = {"model": name, "images": images.digest(), "count": len(images), "chunk_images": chunk_images,
             "half": half}  # fmt: skip
    state_file = parts / "state.json"
    if parts.exists() and (not state_file.exists() or json.loads(state_file.read_text()) != state):
        shutil.rmtree(parts)  # leftovers of another build: start over
    parts.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state_file, state)
    report = on_error or (lambda message: print(f"vitflow: error: {message}", file=sys.stderr))

    from safetensors.torch import load_file, save_file

    chunks = range(0, len(images), chunk_images)
    bar = Progress(len(images), "bank", progress)
    model = model.eval()
    adapter = resolve_adapter(model)
    for start in chunks:
        chunk_file = parts / f"chunk_{start // chunk_images:06d}.safetensors"
        stop = min(start + chunk_images, len(images))
        if chunk_file.exists():
            bar.update(stop - start)
            continue
        features, kept = [], []
        for batch_start in range(start, stop, batch_size):
            tensors, indices = [], []
            for i in range(batch_start, min(batch_start + batch_size, stop)):
                try:
                    tensors.append(preprocess(load_image(images.paths[i])))
                    indices.append(i)
                except ImageLoadError as error:
                    bar.clear()
                    report(str(error))
            if tensors:
                features.append(compute_features(model, torch.stack(tensors).to(device), adapter).cpu())
                kept += indices
            bar.update(min(batch_start + batch_size, stop) - batch_start)
        dtype = torch.float16 if half else torch.float32
        stored = torch.cat(features).to(dtype) if features else torch.empty(0, 0, dtype=dtype)
        tmp = chunk_file.with_suffix(".tmp")
        save_file({"features": stored.contiguous(), "index": torch.tensor(kept, dtype=torch.int64)}, str(tmp))
        os.replace(tmp, chunk_file)
    bar.close()

    loaded = [load_file(str(parts / f"chunk_{start // chunk_images:06d}.safetensors")) for start in chunks]
    nonempty = [part for part in loaded if part["index"].numel()]
    if not nonempty:
        raise ValueError("no image could be read; nothing to put in the bank")
    features = torch.cat([part["features"] for part in nonempty])
    index = torch.cat([part["index"] for part in nonempty])
    labels = torch.tensor(images.labels, dtype=torch.int64)[index]
    metadata = {
        "model": name,
        "preprocessing": preprocessing_config or {},
        "vitflow_version": __version__,
        "source_images": len(images),
        "skipped_images": len(images) - len(index),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    bank = MemoryBank(features, labels, list(images.class_names), metadata)
    bank.save(out)
    shutil.rmtree(parts)
    return bank
