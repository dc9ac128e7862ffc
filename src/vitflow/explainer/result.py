"""The typed result of one DAAM call: tensors on the model's device, no rendering."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from vitflow.core.maps import upsample


@dataclass(frozen=True)
class DAAMResult:
    """Maps for a batch of ``B`` images through ``L`` attention blocks on an ``h x w`` grid.

    Attributes:
        block_maps: ``(B, L, h, w)`` per-block maps ``L_b`` (method.md section 3).
        maps: ``(B, L, h, w)`` accumulated maps ``L_{b,DAAM}``: the attention flow (section 4).
        relevance: ``(B, L, N)`` token relevance ``U_b`` before prefix tokens are dropped and ReLU
            applied; shows how much each [class]/distillation/register token carried.
        logits: ``(B, K)`` the model's output for the batch.
        target: ``(B,)`` the explained class (or label) per image.
        score: ``(B,)`` the explained score ``Y`` per image.
        prefix_tokens: tokens before the patch grid.
        grid: ``(h, w)``.
        feature_weights: ``(B, D)`` the dimension-wise weights ``w`` of a feature target
            (self-supervised mode, method.md section 5), else ``None``.
        probabilities: ``(B, C)`` class probabilities defined by the target (normalised k-NN votes),
            else ``None`` (use ``logits.softmax(1)`` for a classifier).
        input_grad: ``(B, C, H, W)`` ``dY/dx``, from the same backward pass, when asked for
            (``DAAM(...)(x, input_grad=True)``), else ``None``.
    """

    block_maps: torch.Tensor
    maps: torch.Tensor
    relevance: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    score: torch.Tensor
    prefix_tokens: int
    grid: tuple[int, int]
    feature_weights: torch.Tensor | None = None
    probabilities: torch.Tensor | None = None
    input_grad: torch.Tensor | None = None

    @property
    def final(self) -> torch.Tensor:
        """``(B, h, w)`` the explanation: the accumulated map after the last block."""
        return self.maps[:, -1]

    @property
    def num_blocks(self) -> int:
        return self.maps.shape[1]

    def __len__(self) -> int:
        return self.maps.shape[0]

    def upsample(self, size: tuple[int, int], which: str = "maps") -> torch.Tensor:
        """Bilinear resize of ``maps`` (or ``block_maps``) to ``size = (H, W)``: ``(B, L, H, W)``."""
        if which not in ("maps", "block_maps"):
            raise ValueError(f"which must be 'maps' or 'block_maps', got {which!r}")
        return upsample(getattr(self, which), size)

    def _repr_html_(self) -> str:
        """Jupyter shows a summary and the first image's attention flow, animated."""
        from vitflow.render.notebook import result_html  # rendering stays out of the core import

        return result_html(self)

    def to(self, device: torch.device | str) -> DAAMResult:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def __getitem__(self, index: int | slice) -> DAAMResult:
        """The result for a subset of the batch (an int keeps a batch dimension of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        picked = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **picked)
