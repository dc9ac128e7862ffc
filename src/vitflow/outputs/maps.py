"""Raw DAAM maps on disk: safetensors shards written by ``vitflow explain --save-maps``, and
``load_maps`` to read them back without re-running the model.

One shard per chunk of a run (``OUT/maps/chunk_NNNNNN.safetensors``), written atomically by the
rank that computed it. Tensors: ``maps`` and ``block_maps`` ``(B, L, h, w)``, ``relevance``
``(B, L, N)`` (float16 or float32), ``logits`` ``(B, K)``, ``target`` and ``score`` ``(B,)``, and
``feature_weights`` ``(B, D)`` / ``probabilities`` ``(B, C)`` in the self-supervised mode. The
header's JSON metadata holds the image identifiers in row order and how the maps were made.
Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from vitflow.atomic import atomic_path
from vitflow.explainer.result import DAAMResult

FORMAT = "vitflow-maps/1"
MAP_FIELDS = ("maps", "block_maps", "relevance")


@dataclass(frozen=True)
class SavedMaps:
    """Maps read from shards: ``ids[i]`` names the image of row ``i`` of ``result``;
    ``images[i]`` is its source file; ``metadata`` the run's settings (model, rho, grid, ...)."""

    ids: list[str]
    images: list[str]
    result: DAAMResult
    metadata: dict

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, image_id: str) -> int:
        try:
            return self.ids.index(image_id)
        except ValueError:
            raise KeyError(f"no maps saved for {image_id!r}") from None


def save_shard(
    path: str | os.PathLike,
    result: DAAMResult,
    ids: list[str],
    images: list[str],
    metadata: dict,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write one shard atomically: ``result`` (a batch of ``len(ids)`` images, any device)."""
    from safetensors.torch import save_file

    if len(ids) != len(result) or len(images) != len(result):
        raise ValueError(f"{len(ids)} ids / {len(images)} images for {len(result)} results")
    tensors = {}
    for f in fields(result):
        value = getattr(result, f.name)
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            tensors[f.name] = (value.to(dtype) if f.name in MAP_FIELDS else value).contiguous()
    header = {
        **metadata,
        "format": FORMAT,
        "ids": ids,
        "images": images,
        "prefix_tokens": result.prefix_tokens,
        "grid": list(result.grid),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"vitflow": json.dumps(header)})
    return Path(path)


class ShardBuffer:
    """One chunk's results gathered batch by batch for ``save_shard``, each tensor field
    copied into one tensor allocated for the whole chunk (the map fields already in the shard's
    ``dtype``, as ``save_shard`` would convert them). Kept as many small per-batch tensors, a
    chunk's results pinned the heap: resident memory rose 60-80 MB over each 512-image chunk of
    the demo ViT and fell at its end."""

    def __init__(self, capacity: int, dtype: torch.dtype = torch.float32) -> None:
        self.capacity, self.dtype = capacity, dtype
        self.ids: list[str] = []
        self.images: list[str] = []
        self._tensors: dict[str, torch.Tensor] = {}
        self._first: DAAMResult | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, result: DAAMResult, ids: list[str], images: list[str]) -> None:
        start, count = len(self.ids), len(result)
        if start + count > self.capacity:
            raise ValueError(f"a shard of {self.capacity} rows cannot take {start + count}")
        for f in fields(result):
            value = getattr(result, f.name)
            if not isinstance(value, torch.Tensor):
                continue
            if f.name not in self._tensors:
                dtype = self.dtype if f.name in MAP_FIELDS else value.dtype
                self._tensors[f.name] = torch.empty((self.capacity, *value.shape[1:]), dtype=dtype)
            self._tensors[f.name][start : start + count] = value.detach().cpu()
        if self._first is None:
            self._first = result
        self.ids += ids
        self.images += images

    def result(self) -> DAAMResult:
        """The rows added so far, as one result."""
        if self._first is None:
            raise ValueError("an empty shard has no result")
        rows: dict[str, Any] = {k: t[: len(self)] for k, t in self._tensors.items()}
        return replace(self._first, **rows)


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The shards of a run: ``path`` itself (a shard), ``path/*.safetensors`` or ``path/maps/*``."""
    path = Path(path)
    if path.is_file():
        return [path]
    for folder in (path / "maps", path):
        found = sorted(folder.glob("chunk_*.safetensors")) if folder.is_dir() else []
        if found:
            return found
    raise ValueError(f"{path}: no map shards found (write them with vitflow explain --save-maps)")


def read_shard(path: str | os.PathLike, device: torch.device | str = "cpu") -> SavedMaps:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            header = json.loads((handle.metadata() or {}).get("vitflow", "null"))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ValueError(f"{path}: not a vitflow map shard")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except ValueError:
        raise
    except Exception as error:  # safetensors raises several types for damaged files
        raise ValueError(f"{path}: unreadable or corrupt map shard ({str(error).splitlines()[0]})") from None
    ids, images = header.pop("ids"), header.pop("images")
    result = DAAMResult(prefix_tokens=header.pop("prefix_tokens"), grid=tuple(header.pop("grid")), **tensors)
    return SavedMaps(ids, images, result, header)


def iter_maps(path: str | os.PathLike, device: torch.device | str = "cpu") -> Iterator[SavedMaps]:
    """Shard by shard (memory for one shard at a time), in the run's item order."""
    for shard in shard_files(path):
        yield read_shard(shard, device)


def load_maps(path: str | os.PathLike, device: torch.device | str = "cpu") -> SavedMaps:
    """Every shard of a run (an output folder of ``vitflow explain --save-maps``, its ``maps/``
    folder, or one shard) as one ``SavedMaps``, rows in the run's item order.

    For example, reading a run back:

        saved = vitflow.load_maps("runs/photos")
        saved.result.final[saved.row("photos/cat")]      # (h, w) the explanation of photos/cat
    """
    shards = list(iter_maps(path, device))
    if len(shards) == 1:
        return shards[0]
    first = shards[0].result
    tensors = {}
    for f in fields(first):
        if isinstance(getattr(first, f.name), torch.Tensor):
            tensors[f.name] = torch.cat([getattr(s.result, f.name) for s in shards])
    result = DAAMResult(prefix_tokens=first.prefix_tokens, grid=first.grid, **tensors)
    metadata = {k: v for k, v in shards[0].metadata.items() if k not in ("rank", "chunk")}
    return SavedMaps(
        [i for s in shards for i in s.ids], [i for s in shards for i in s.images], result, metadata
    )
