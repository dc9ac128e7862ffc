"""Colormaps: matplotlib's when it is installed; otherwise its "jet", from the same segment data."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# matplotlib's _jet_data (piecewise-linear segments), so that the fallback equals matplotlib's jet
_JET_SEGMENTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


def _builtin_jet() -> np.ndarray:
    levels = np.linspace(0.0, 1.0, 256)
    channels = [
        np.interp(levels, [x for x, _ in _JET_SEGMENTS[name]], [y for _, y in _JET_SEGMENTS[name]])
        for name in ("red", "green", "blue")
    ]
    return np.stack(channels, axis=1)


def colormap_lut(name: str = "jet") -> np.ndarray:
    """``(256, 3)`` float RGB lookup table in [0, 1] for a colormap name."""
    try:
        import matplotlib
    except ImportError:
        if name == "jet":
            return _builtin_jet()
        raise ValueError(
            f"colormap {name!r} needs matplotlib (pip install matplotlib); without it only 'jet' is available"
        ) from None
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown colormap {name!r}; use a matplotlib name such as 'jet', 'inferno', 'viridis'"
        ) from None
    return np.asarray(cmap(np.linspace(0.0, 1.0, 256)))[:, :3]


def apply_colormap(heatmap: np.ndarray, name: str = "jet") -> np.ndarray:
    """``(H, W)`` uint8 heatmap -> ``(H, W, 3)`` uint8 RGB."""
    return np.take(colormap_lut_uint8(name), uint8_heatmap(heatmap), axis=0)


def uint8_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """``heatmap`` as an array, refused unless it is uint8 (what the colormap tables index)."""
    heatmap = np.asarray(heatmap)
    if heatmap.dtype != np.uint8:
        raise ValueError(f"a colormap takes a uint8 heatmap (see to_uint8), got {heatmap.dtype}")
    return heatmap


@lru_cache(maxsize=16)
def colormap_lut_uint8(name: str) -> np.ndarray:
    """The uint8 table, built once per name (matplotlib's lookup costs ~1.4 ms, more than the
    rest of an overlay)."""
    lut = np.round(colormap_lut(name) * 255.0).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def available_colormaps(candidates=("jet", "viridis", "inferno", "magma", "plasma", "turbo")) -> list[str]:
    """The colormaps this installation can draw (jet always; the others need matplotlib)."""
    names = []
    for name in candidates:
        try:
            colormap_lut(name)
        except ValueError:
            continue
        names.append(name)
    return names
