"""Building a memory bank from labelled images: batched, resumable, atomic, on any number of ranks.

Images are cut into chunks of whole batches (``vitflow.runs.distributed``). Each finished chunk's
features are saved under ``OUT.parts/`` by the rank that computed them, with a ``state.json`` of
the build's settings, so an interrupted build (with any number of ranks) picks up at the missing
chunks. When every chunk is done, rank 0 streams the chunks into the bank file, one chunk in
memory at a time, and removes the parts. Unreadable images are reported and left out.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vitflow.adapters import Adapter, model_identity, resolve_adapter
from vitflow.atomic import atomic_path
from vitflow.data.folders import LabelledImages
from vitflow.data.loader import ImageFiles, batches
from vitflow.runs.distributed import SINGLE, ChunkedRun, Group, describer, run_chunks
from vitflow.runs.progress import Progress
from vitflow.targets.bank import FORMAT, MemoryBank
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
    workers: int = 0,
    group: Group = SINGLE,
) -> MemoryBank:
    """Compute, store and return the bank of ``images`` for ``model`` (headless, ``(B, D)`` output).

    Args:
        preprocess: PIL image -> ``(3, H, W)`` tensor (the model's own preprocessing).
        images: the labelled image list.
        out: the bank file; ``out.parts/`` holds finished chunks while building.
        model_name: recorded in the bank and checked when it is used (default: the model's identity).
        chunk_images: images per resumable chunk (rounded up to whole batches).
        half: store features in float16 (half the memory; similarities change by ~1e-3).
        on_error: called with a one-line message per unreadable image (default: print to stderr).
        workers: ``DataLoader`` processes decoding images (0: in this process).
        group: this process's rank; each rank computes its share of the chunks, rank 0 writes the
            bank, and every rank returns it.
    """
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    if not out.parent.is_dir() and out.parent.exists():
        raise ValueError(f"cannot write the bank {out}: {out.parent} is not a folder")
    name = model_name or model_identity(model)
    state = {"model": name, "half": half, "classes": list(images.class_names)}
    run = ChunkedRun.open(
        len(images), batch_size, chunk_images, parts, state,
        lambda i: f"{images.paths[i]}\t{images.labels[i]}", group,
        strict=False, what="bank build", suffix=".safetensors",
    )  # fmt: skip
    plan, ledger, todo, per_chunk = run.plan, run.ledger, run.todo, run.batches_per_chunk
    report = on_error or (lambda message: print(f"vitflow: error: {message}", file=sys.stderr))

    from safetensors.torch import save_file

    bar = Progress(len(images), "bank", progress and group.is_main)
    bar.skip(run.items_done())
    model = model.eval()
    adapter = resolve_adapter(model)
    device = torch.device(device)
    decoded = iter(
        batches(ImageFiles(images.paths, preprocess), run.my_batches(), workers,
                pin_memory=device.type == "cuda")
    )  # fmt: skip
    dtype = torch.float16 if half else torch.float32

    def build_chunk(chunk: int) -> int:
        features, kept = [], []
        for _ in plan[chunk]:
            batch = next(decoded)
            for _, message in batch.errors:
                bar.clear()
                report(message)
            if batch.x is not None:
                x = batch.x.to(device, non_blocking=True)
                features.append(compute_features(model, x, adapter).cpu())
                kept += batch.indices
            bar.update(len(batch.indices) + len(batch.errors))
        stored = torch.cat(features).to(dtype) if features else torch.empty(0, 0, dtype=dtype)
        tensors = {"features": stored.contiguous(), "index": torch.tensor(kept, dtype=torch.int64)}
        ranks = {"rank": str(group.rank), "world_size": str(group.world_size)}
        with atomic_path(ledger.path(chunk, ".safetensors")) as tmp:
            save_file(tensors, str(tmp), metadata=ranks)
        return sum(len(b) for b in plan[chunk])

    describe = describer(plan, "images", lambda i: str(images.paths[i]))
    try:
        run_chunks(group, todo, build_chunk, describe, bar.update)
    finally:
        bar.close()
    if group.is_main:
        layout = {"batch_size": batch_size, "chunk_images": per_chunk * batch_size, "chunks": len(plan),
                  "world_size": group.world_size}  # fmt: skip
        metadata = {
            "model": name,
            "preprocessing": preprocessing_config or {},
            "vitflow_version": __version__,
            "source_images": len(images),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        files = [ledger.path(c, ".safetensors") for c in range(len(plan))]
        _merge_chunks(files, images, out, metadata, layout)
        shutil.rmtree(parts)
    group.barrier()
    return MemoryBank.load(out)


def _merge_chunks(
    chunks: list[Path], images: LabelledImages, out: Path, metadata: dict, layout: dict
) -> None:
    """Stream the chunks' features into one bank file (safetensors), one chunk in memory at a
    time: the header is computed from the chunks' shapes, then each chunk's rows are appended.

    ``layout`` gains the rank and world size that computed each chunk and its row count."""
    from safetensors import safe_open

    shapes, dims, dtypes, shards = [], set(), set(), []
    for path in chunks:
        with safe_open(str(path), framework="pt") as handle:
            info = handle.metadata() or {}
            rows_, *dim = handle.get_slice("features").get_shape()
            index = handle.get_tensor("index")
            if index.numel():
                dims.add(tuple(dim))
                dtypes.add(handle.get_slice("features").get_dtype())
            shapes.append(index.numel())
            shards.append({"rows": index.numel(), "rank": int(info.get("rank", 0)),
                           "world_size": int(info.get("world_size", 1))})  # fmt: skip
    rows = sum(shapes)
    if rows == 0:
        raise ValueError("no image could be read; nothing to put in the bank")
    (dim,), (dtype,) = dims, dtypes
    (width,) = dim
    labels = torch.tensor(images.labels, dtype=torch.int64)
    index = torch.cat([_read(path, "index") for path in chunks])
    kept_labels = labels[index]
    header_meta = {
        **metadata,
        "skipped_images": len(images) - rows,
        "layout": {**layout, "shards": shards},
        "format": FORMAT,
        "class_names": list(images.class_names),
        "count": rows,
        "feature_dim": width,
        "dtype": {"F16": "float16", "F32": "float32"}[dtype],
    }
    item = {"F16": 2, "F32": 4}[dtype]
    feature_bytes = rows * width * item
    end = feature_bytes + 8 * rows
    header = {
        "__metadata__": {"vitflow": json.dumps(header_meta)},
        "features": {"dtype": dtype, "shape": [rows, width], "data_offsets": [0, feature_bytes]},
        "labels": {"dtype": "I64", "shape": [rows], "data_offsets": [feature_bytes, end]},
    }
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data to 8 bytes
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        for path, count in zip(chunks, shapes, strict=True):
            if count:
                handle.write(_read(path, "features").contiguous().numpy().tobytes())
        handle.write(kept_labels.numpy().tobytes())
        handle.flush()
        os.fsync(handle.fileno())


def _read(path: Path, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(key)
