"""The two map operations every part of the package shares: min-max normalisation and bilinear
upsampling. Pure tensor math."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map along the last dimension to [0, 1]: ``(..., n)``; a constant
    map becomes 0. For ``(..., h, w)`` maps pass ``maps.flatten(-2)``."""
    lo = maps.amin(dim=-1, keepdim=True)
    span = maps.amax(dim=-1, keepdim=True) - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (half-pixel centres, ``align_corners=False``) of ``(..., h, w)`` maps to
    ``(..., H, W)``; the dtype is kept (integer maps are resized in float32)."""
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    work = maps if maps.is_floating_point() else maps.float()
    out = F.interpolate(work.reshape(-1, 1, h, w), size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *out.shape[-2:])
