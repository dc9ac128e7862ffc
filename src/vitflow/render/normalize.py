"""Display normalisation of one image's attention flow (method.md section 6)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from vitflow.core.maps import upsample

Mode = Literal["sigmoid", "global", "minmax"]
MODES: tuple[str, ...] = ("sigmoid", "global", "minmax")


def _as_float64(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    array = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    array = array.astype(np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(
            f"to_uint8 takes one image's maps, shape (L, h, w) or (h, w), got {array.shape}; "
            "index the batch first, e.g. result.maps[0]"
        )
    return array


def _unit_to_uint8(unit: np.ndarray) -> np.ndarray:
    # np.uint8(255 * x) as in the published code (truncation), clipped so nothing wraps around
    return np.clip(255.0 * unit, 0, 255).astype(np.uint8)


def _divide(numerator: np.ndarray, denominator: np.ndarray | float) -> np.ndarray:
    """``numerator / denominator`` with 0 wherever the denominator is 0 (a constant map)."""
    denominator = np.broadcast_to(np.asarray(denominator, dtype=np.float64), numerator.shape)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _per_map(stat, array: np.ndarray) -> np.ndarray:
    return stat(array, axis=(1, 2), keepdims=True)


def sigmoid_normalize(maps: np.ndarray) -> np.ndarray:
    """The published default: scale by the final map's maximum, squash, min-max each map."""
    x = _divide(maps, maps[-1].max())
    z = 1.0 / (1.0 + np.exp(-5.0 * x)) - 0.5
    lo = _per_map(np.min, z)
    return _unit_to_uint8(_divide(z - lo, _per_map(np.max, z) - lo))


def global_normalize(maps: np.ndarray) -> np.ndarray:
    """The paper's "global max-min": early blocks dim, brightening as evidence accumulates."""
    g_max, g_min = maps[-1].max(), maps[-1].min()
    b_max, b_min = _per_map(np.max, maps), _per_map(np.min, maps)
    intensity = np.maximum((maps - g_min) / (b_max - g_min + 1e-10), 0.0)
    return _unit_to_uint8(_divide(b_max - b_min, g_max - g_min) * intensity)


def minmax_normalize(maps: np.ndarray) -> np.ndarray:
    """Each map to [0, 255] on its own (what users of other CAM tools expect)."""
    lo = _per_map(np.min, maps)
    return _unit_to_uint8(_divide(maps - lo, _per_map(np.max, maps) - lo))


_NORMALIZERS = {"sigmoid": sigmoid_normalize, "global": global_normalize, "minmax": minmax_normalize}


def to_uint8(
    maps: torch.Tensor | np.ndarray, size: tuple[int, int] | None = None, mode: Mode | str = "sigmoid"
) -> np.ndarray:
    """One image's accumulated maps as 8-bit heatmaps.

    Args:
        maps: ``(L, h, w)`` accumulated maps ``L_{1,DAAM} .. L_{L,DAAM}`` of one image (a single
            ``(h, w)`` map is treated as ``L = 1`` and comes back as one ``(H, W)`` heatmap).
            "sigmoid" and "global" use the last map as the reference, so pass the whole sequence
            even to render one block.
        size: ``(H, W)`` to resize to (bilinear, after the uint8 conversion, as published);
            ``None`` keeps ``h x w``.
        mode: ``"sigmoid"`` (published default), ``"global"`` (the paper's figure) or ``"minmax"``.

    Returns:
        ``(L, H, W)`` uint8 numpy array (``(H, W)`` for one ``(h, w)`` map).
    """
    if mode not in _NORMALIZERS:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    out = _NORMALIZERS[mode](_as_float64(maps))
    out = out if size is None else resize_uint8(out, size)
    return out[0] if np.ndim(maps) == 2 else out


def scale_to_uint8(maps: torch.Tensor | np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """``(L, h, w)`` maps on one common scale, their joint maximum at 255 (e.g. per-block maps that
    should stay comparable); optionally resized."""
    array = _as_float64(maps)
    out = _unit_to_uint8(_divide(array, array.max()))
    return out if size is None else resize_uint8(out, size)


def resize_uint8(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (half-pixel centres) of ``(L, h, w)`` uint8 maps to ``size = (H, W)``."""
    resized = upsample(torch.from_numpy(maps).float(), size)
    return resized.round().clamp(0, 255).to(torch.uint8).numpy()
