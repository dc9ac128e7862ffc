"""Localisation of an explanation against ground-truth object masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` maps -> ``(B, H, W)``, bilinear (half-pixel centres), as overlays show them."""
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Whether each map's maximum, after upsampling to the mask size, lies inside the mask.

    Args:
        maps: ``(B, h, w)`` explanation maps (e.g. ``result.final``).
        masks: ``(B, H, W)`` bool object masks.

    Returns:
        ``(B,)`` bool hits. A map that is constant (no maximum) counts as a miss.
    """
    if maps.ndim != 3 or masks.ndim != 3 or maps.shape[0] != masks.shape[0]:
        raise ValueError(f"pointing_game takes (B, h, w) maps and (B, H, W) masks, got {tuple(maps.shape)} "
                         f"and {tuple(masks.shape)}")  # fmt: skip
    big = upsample_maps(maps, masks.shape[-2:]).flatten(1)
    peak = big.argmax(dim=1)
    hits = masks.flatten(1).to(big.device).gather(1, peak[:, None])[:, 0].bool()
    constant = big.amax(dim=1) == big.amin(dim=1)
    return hits & ~constant
