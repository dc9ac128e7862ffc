"""A labelled memory bank of L2-normalised features, stored as safetensors with JSON metadata.

One ``.bank`` file is a safetensors file holding ``features`` ``(M, D)`` (float16 or float32,
unit rows) and ``labels`` ``(M,)`` int64; its header metadata holds the class names and where
the features came from (model, preprocessing, vitflow version). Loading never unpickles.
Nearest-neighbour search runs over chunks of the bank, so a 1.28M x 768 bank needs memory for
the bank itself plus one ``chunk x D`` block, never an ``M x B`` similarity matrix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitflow.adapters.base import model_identity
from vitflow.atomic import atomic_path

FORMAT = "vitflow-memory-bank/1"


class BankError(ValueError):
    """A memory bank is malformed or does not fit the model it is used with."""


@dataclass
class MemoryBank:
    """``features`` ``(M, D)`` unit rows; ``labels`` ``(M,)`` in ``0..C-1``; ``class_names`` ``C``."""

    features: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- shape ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def validate(self) -> None:
        f, y = self.features, self.labels
        if f.ndim != 2 or not f.dtype.is_floating_point or f.shape[0] == 0:
            raise BankError(
                f"bank features must be a non-empty float (M, D) tensor, got {tuple(f.shape)} {f.dtype}"
            )
        if y.shape != (f.shape[0],) or y.dtype != torch.int64:
            raise BankError(
                f"bank labels must be int64 of shape ({f.shape[0]},), got {tuple(y.shape)} {y.dtype}"
            )
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise BankError(f"bank labels must lie in 0..{self.num_classes - 1} (one per class name)")
        counts = torch.bincount(y.cpu(), minlength=self.num_classes)
        empty = [self.class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        if empty:
            raise BankError(
                f"bank has no entries for {len(empty)} class(es), e.g. {empty[0]!r}; rebuild it from data "
                "with images of every class or drop those classes"
            )
        step = max(1, f.shape[0] // 4096)
        norms = f[::step].float().norm(dim=1)
        if not torch.isfinite(norms).all() or (norms - 1).abs().max() > 1e-2:
            raise BankError("bank features must be finite and L2-normalised (unit rows)")

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model other than the one the bank was built with."""
        expected = self.metadata.get("model")
        actual = model_identity(model)
        if expected and expected != actual:
            raise BankError(
                f"this bank was built with model {expected!r}, not {actual!r}; build one with this model "
                "(vitflow bank build) or use the bank's model"
            )

    def to(self, device: torch.device | str) -> MemoryBank:
        """The bank on ``device`` (e.g. the GPU when it has room: searches then stay there)."""
        return MemoryBank(self.features.to(device), self.labels.to(device), self.class_names, self.metadata)

    # -- search --------------------------------------------------------------------------------
    def topk(
        self, queries: torch.Tensor, k: int, chunk_size: int = 65536
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most cosine-similar entries to each unit-norm query.

        Args:
            queries: ``(B, D)`` L2-normalised.
            k: neighbours per query (at most ``len(self)``).
            chunk_size: bank rows compared at once; memory is ``O(B * chunk_size + chunk_size * D)``.

        Returns:
            ``(similarities (B, k) float32, indices (B, k) int64)`` on the queries' device, best
            first; equal similarities keep the lower bank index first.
        """
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise BankError(f"queries must be (B, {self.dim}) for this bank, got {tuple(queries.shape)}")
        if not 1 <= k <= len(self):
            raise BankError(f"k must be between 1 and the bank size {len(self)}, got {k}")
        device = queries.device
        q = queries.float()
        best_sim = torch.empty(q.shape[0], 0, device=device)
        best_idx = torch.empty(q.shape[0], 0, dtype=torch.long, device=device)
        for start in range(0, len(self), chunk_size):
            block = self.features[start : start + chunk_size].to(device=device, dtype=torch.float32)
            sims = q @ block.T  # b c
            sim, idx = sims.topk(min(k, block.shape[0]), dim=1)
            merged_sim = torch.cat([best_sim, sim], dim=1)
            merged_idx = torch.cat([best_idx, idx + start], dim=1)
            order = merged_sim.sort(dim=1, descending=True, stable=True).indices[:, :k]
            best_sim, best_idx = merged_sim.gather(1, order), merged_idx.gather(1, order)
        return best_sim, best_idx

    def gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(..., D)`` float32 and labels ``(...)`` of bank rows, on ``indices``' device."""
        flat = indices.reshape(-1).to(self.features.device)
        features = self.features[flat].to(device=indices.device, dtype=torch.float32)
        labels = self.labels[flat].to(indices.device)
        return features.reshape(*indices.shape, self.dim), labels.reshape(indices.shape)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank atomically (temporary file in the same folder, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            **self.metadata,
            "format": FORMAT,
            "class_names": list(self.class_names),
            "count": len(self),
            "feature_dim": self.dim,
            "dtype": str(self.features.dtype).removeprefix("torch."),
        }
        tensors = {"features": self.features.contiguous().cpu(), "labels": self.labels.contiguous().cpu()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"vitflow": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> MemoryBank:
        """Read a bank written by ``save`` (or ``vitflow bank build``)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise BankError(f"memory bank {path}: no such file")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                header = json.loads((handle.metadata() or {}).get("vitflow", "null"))
                keys = set(handle.keys())
                if header is None or header.get("format") != FORMAT or keys != {"features", "labels"}:
                    raise BankError(
                        f"memory bank {path}: not a vitflow memory bank (build one with vitflow bank build)"
                    )
                features, labels = handle.get_tensor("features"), handle.get_tensor("labels")
        except BankError:
            raise
        except Exception as error:  # safetensors raises several types for damaged files
            raise BankError(
                f"memory bank {path}: unreadable or corrupt ({str(error).splitlines()[0]})"
            ) from None
        names = header.pop("class_names", None) if isinstance(header, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BankError(f"memory bank {path}: its metadata has no list of class names (damaged file?)")
        for key in ("format", "count", "feature_dim", "dtype"):
            header.pop(key, None)
        try:
            return cls(features, labels, names, header)
        except BankError as error:
            raise BankError(f"memory bank {path}: {error}") from None
