"""What to explain: the score ``Y`` whose gradient weights the channels (method.md sections 2, 5).

A target is any object with ``__call__(output) -> TargetScores`` and a default coefficient
transform ``rho``. ``DAAM`` turns the user's ``target=`` argument into one with
``as_target``, following captum's convention: ``None`` explains the
predicted class, an int broadcasts to the batch, a sequence or 1-D tensor gives one class per
image; any object with the protocol (e.g. ``KNNTarget``) is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from vitflow.core.daam import Rho


@dataclass(frozen=True)
class TargetScores:
    """``scores`` ``(B,)``: the explained ``Y`` per image (its gradient gives the coefficients);
    ``target`` ``(B,)``: the explained class, ``-1`` where there is none; ``weights`` ``(B, D)``:
    the dimension-wise feature weights ``w`` for feature targets, else ``None``;
    ``probabilities`` ``(B, C)``: class probabilities when the target defines its own (k-NN votes),
    else ``None`` (a classifier's softmax)."""

    scores: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor | None = None
    probabilities: torch.Tensor | None = None


@runtime_checkable
class Target(Protocol):
    rho: Rho

    def __call__(self, output: torch.Tensor) -> TargetScores:
        """``output``: ``(B, K)`` model output (logits, or features for a headless backbone)."""
        ...
