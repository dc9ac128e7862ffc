"""The map operations every part of the package shares: min-max normalisation, bilinear
upsampling and Gaussian smoothing. Pure tensor math."""

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


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(B, C, H, W)`` smoothed channel by channel with a Gaussian of ``sigma`` pixels, truncated
    at ``int(3 * sigma)`` pixels (at least 1) and normalised, the edges reflected."""
    radius = max(1, int(3 * sigma))
    kernel = torch.exp(
        -(torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype) ** 2) / (2 * sigma**2)
    )
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    horizontal = kernel.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1)
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    return F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)
