"""Reading and preprocessing images in ``torch.utils.data.DataLoader`` worker processes.

A run fixes its batches up front (lists of item indices, see
``vitflow.runs.distributed.chunk_batches``); ``batches`` yields them in that order, decoded by
``workers`` processes ahead of the model (``prefetch_factor`` batches each: a bounded queue, so
memory stays flat on long runs). An image that cannot be read travels as an error line instead of
a tensor, so a broken file never stops a batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vitflow.data.images import MAX_PIXELS, ImageLoadError, read_image

# extra(index, image) -> what travels with the image (an evaluation mask, the photo at its display
# size), picklable, or None
Extra = Callable[[int, Any], Any]


def _cores_per_rank() -> int:
    """The CPU cores this process may use, shared by the ``LOCAL_WORLD_SIZE`` ranks on its machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def default_workers(device: torch.device | str | None = None) -> int:
    """Decoding processes per rank for a model on ``device``.

    On an accelerator (or ``None``): the cores this rank's share leaves beside the main process, at
    most 8. On the CPU the model's threads already use every core and a decoding process takes
    them from it: on 2 cores one worker made ``explain`` 25-30 % slower than decoding in the main
    process (``benchmarks/pipeline.py``, demo ViT and deit_small), so none up to 5 cores, then one
    per 4 cores beyond 2."""
    cores = _cores_per_rank()
    if device is not None and torch.device(device).type == "cpu":
        return max(0, min(8, (cores - 2) // 4))
    return max(0, min(8, cores - 1))


def default_writers(device: torch.device | str | None = None) -> int:
    """Threads encoding outputs per rank for a model on ``device``.

    On an accelerator (or ``None``): half the rank's cores, at least 2 and at most 8 (PNG and GIF
    encoding release the GIL; on 2 cores, 2 threads write 1.8x faster than one). On the CPU the
    rule of ``default_workers``, for its reason: the model's threads use every core, and a writer
    thread that takes one from them stalls the other at the next barrier. On 2 cores writing in
    the main thread made ``explain`` faster than 1 or 2 writer threads (``benchmarks/pipeline.py``:
    0.62x model only against 0.51x and 0.50x on the demo ViT; 0.75x, 0.76x, 0.74x on deit_small)."""
    if device is not None and torch.device(device).type == "cpu":
        return default_workers(device)
    return max(2, min(8, _cores_per_rank() // 2))


@dataclass
class Batch:
    """Decoded items of one batch, in the batch's order.

    ``indices``: the items whose images were read; ``x``: their ``(B, 3, H, W)`` preprocessed
    images (``None`` when none was); ``notes``: per read item, what was done to the input;
    ``extras``: per read item, what ``extra`` made of it; ``errors``: ``(index, one-line message)`` per
    unreadable item.
    """

    indices: list[int] = field(default_factory=list)
    x: torch.Tensor | None = None
    notes: list[list[str]] = field(default_factory=list)
    extras: list[Any] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> Batch:  # called by the DataLoader when pin_memory=True
        if self.x is not None:
            self.x = self.x.pin_memory()
        return self


class ImageFiles(Dataset):
    """Item ``i``: ``(i, tensor, notes, extra, None)`` for a readable image, ``(i, None, [], None,
    message)`` for one that is not."""

    def __init__(
        self,
        paths: Sequence[Path],
        preprocess: Callable,
        max_pixels: int | None = MAX_PIXELS,
        extra: Extra | None = None,
    ) -> None:
        self.paths, self.preprocess, self.max_pixels, self.extra = list(paths), preprocess, max_pixels, extra

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            loaded = read_image(self.paths[index], self.max_pixels)
            tensor = self.preprocess(loaded.image)
            extra = self.extra(index, loaded.image) if self.extra is not None else None
        except ImageLoadError as error:
            return index, None, [], None, str(error)
        except Exception as error:  # noqa: BLE001 - a transform or extra failing on one file costs that file
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
            return index, None, [], None, f"{self.paths[index]}: could not be prepared ({reason})"
        return index, tensor, loaded.notes, extra, None


def collate(samples: list) -> Batch:
    batch, tensors = Batch(), []
    for index, tensor, notes, extra, error in samples:
        if error is not None:
            batch.errors.append((index, error))
            continue
        batch.indices.append(index)
        tensors.append(tensor)
        batch.notes.append(notes)
        batch.extras.append(extra)
    if tensors:
        batch.x = torch.stack(tensors)
    return batch


def batches(
    dataset: Dataset, plan: Sequence[Sequence[int]], workers: int = 0, pin_memory: bool = False
) -> Iterator[Batch]:
    """The batches of ``plan`` (index lists), in order, decoded by ``workers`` processes (0: here)."""
    if workers == 0:
        for indices in plan:
            yield collate([dataset[i] for i in indices])
        return
    loader = DataLoader(
        dataset,
        batch_sampler=[list(indices) for indices in plan],
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=2,
    )
    yield from loader
