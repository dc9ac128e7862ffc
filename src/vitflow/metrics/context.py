"""What every registered metric receives besides the maps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScoringContext:
    """``forward(x) -> (N, K)`` logits (the adapter's ``forward``);
    ``x`` ``(B, C, H, W)`` the model's inputs; ``target`` ``(B,)`` the explained classes;
    ``masks`` ``(B, H, W)`` bool object masks at the input's geometry, or ``None``."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor
    target: torch.Tensor
    masks: torch.Tensor | None = None

    @property
    def object_masks(self) -> torch.Tensor:
        """``masks``, for the metrics registered with ``needs_mask=True`` (never run without them)."""
        if self.masks is None:
            raise ValueError("this metric needs object masks: evaluate a scenes folder or give --boxes")
        return self.masks
