"""Heatmap over image, following pytorch-grad-cam's ``show_cam_on_image`` habits."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vitflow.render.colormap import apply_colormap

#: how a map meets the photo. "fade" (the default): ``t * paper + (1 - t) * image`` with
#: ``t = heat / 255``, clipped: the published overlay where the map is at its maximum, the photo
#: itself, untinted, where it is zero (jet's dark blue would otherwise tint the whole picture).
#: "paper": the published overlay everywhere, ``alpha * cmap(heat) + image_weight * image``,
#: clipped (the paper's figures).
BLENDS = ("fade", "paper")

#: the fade's weight of each heat level, ``heat / 255`` in float32 (the viewer uses this table)
FADE = np.arange(256, dtype=np.float32) / np.float32(255)


def check_blend(blend: str) -> str:
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    return blend


def image_to_uint8(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """An RGB image as ``(H, W, 3)`` uint8: a PIL image, a uint8 array, a float array in [0, 1]
    (``show_cam_on_image``'s input), or a ``(3, H, W)`` float tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if array.min() < 0 or array.max() > 1:
            raise ValueError("a float image must lie in [0, 1] (undo the model's normalisation first)")
        return np.round(array * 255.0).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {array.dtype}; use uint8 or float in [0, 1]")


def overlay(
    image: Image.Image | np.ndarray | torch.Tensor,
    heatmap: np.ndarray,
    alpha: float = 0.4,
    image_weight: float = 0.8,
    cmap: str = "jet",
    blend: str = "fade",
) -> np.ndarray:
    """``alpha * cmap(heatmap) + image_weight * image`` in 8-bit RGB, clipped (the published
    overlay is 0.4 JET + 0.8 image), faded to the image where the map is low (``blend="fade"``,
    see ``BLENDS``; ``"paper"`` for the published overlay everywhere).

    Args:
        image: the image the model saw (see ``image_to_uint8`` for accepted forms).
        heatmap: ``(h, w)`` uint8 from ``to_uint8``; resized bilinearly to the
            image when sizes differ.
        alpha: weight of the coloured heatmap.
        image_weight: weight of the image.
        cmap: colormap name.
        blend: ``"fade"`` or ``"paper"``.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    rgb = image_to_uint8(image)
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be one (h, w) map, got shape {heatmap.shape}")
    if heatmap.shape != rgb.shape[:2]:
        size = (rgb.shape[1], rgb.shape[0])
        heatmap = np.asarray(Image.fromarray(heatmap).resize(size, Image.Resampling.BILINEAR))
    colored = apply_colormap(heatmap, cmap).astype(np.float64)
    image = rgb.astype(np.float64)
    blended = alpha * colored + image_weight * image
    if check_blend(blend) == "fade":
        t = (heatmap.astype(np.float64) / 255.0)[..., None]
        blended = t * blended + (1.0 - t) * image
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
