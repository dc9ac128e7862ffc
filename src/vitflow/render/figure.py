"""Publication figure of the attention flow: the input, the accumulated map at each (chosen)
block, optionally the per-block maps below, with a colour bar. Needs matplotlib."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vitflow.atomic import write_bytes_atomic
from vitflow.render.placement import as_display


def _pick_blocks(num_blocks: int, blocks: Sequence[int] | None) -> list[int]:
    """1-based block numbers; all of them by default."""
    chosen = list(range(1, num_blocks + 1)) if blocks is None else [int(b) for b in blocks]
    bad = [b for b in chosen if not 1 <= b <= num_blocks]
    if bad or not chosen:
        raise ValueError(f"blocks must be numbers from 1 to {num_blocks}, got {list(blocks or [])}")
    return chosen


def flow_figure(
    image,
    maps: torch.Tensor | np.ndarray,
    block_maps: torch.Tensor | np.ndarray | None = None,
    *,
    blocks: Sequence[int] | None = None,
    mode: str = "global",
    cmap: str = "jet",
    alpha: float = 0.5,
    image_weight: float = 0.6,
    title: str | None = None,
    max_columns: int = 9,
    blend: str = "fade",
):
    """A matplotlib figure of one image's attention flow.

    Args:
        image: the input as the model saw it (``(H, W, 3)`` uint8, float in [0, 1], or PIL), or a
            ``Display`` (the original photo with the crop's box).
        maps: ``(L, h, w)`` accumulated maps.
        block_maps: ``(L, h, w)`` per-block maps for a second row (scaled by their common maximum),
            or ``None``.
        blocks: 1-based blocks to show (default all); panels wrap after ``max_columns``.
        mode: display normalisation of the accumulated maps; ``"global"`` (default) keeps one colour
            scale across blocks, so early blocks look dim.
        blend: ``"fade"`` (the photo shows where the map is low) or ``"paper"``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    display = as_display(image)
    rgb = display.image
    chosen = _pick_blocks(len(maps), blocks)
    heat = display.heat(maps, mode=mode)
    rows_of_maps = [("accumulated", heat)]
    if block_maps is not None:
        rows_of_maps.append(("per block", display.block_heat(block_maps)))

    panels_per_row = len(chosen) + 1
    columns = min(panels_per_row, max_columns)
    wraps = math.ceil(panels_per_row / columns)
    rows = wraps * len(rows_of_maps)
    figsize = (1.6 * columns + 0.8, 1.75 * rows + (0.4 if title else 0))
    fig, axes = plt.subplots(rows, columns, figsize=figsize, squeeze=False, constrained_layout=True)
    for ax in axes.flat:
        ax.axis("off")
    for r, (label, frames) in enumerate(rows_of_maps):
        panels = [("input" if r == 0 else "", rgb)] + [
            (
                f"{label}, block {b}" if i == 0 else f"block {b}",
                display.overlay(frames[b - 1], alpha, image_weight, cmap, blend=blend),
            )
            for i, b in enumerate(chosen)
        ]
        for p, (name, picture) in enumerate(panels):
            ax = axes[r * wraps + p // columns, p % columns]
            if r > 0 and p == 0:
                continue  # the input is shown once, in the first row
            ax.imshow(picture)
            ax.set_title(name, fontsize=8)
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=cmap), ax=axes.ravel().tolist(), shrink=0.8,
                 label="relevance (global scale)" if mode == "global" else f"relevance ({mode})")  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(
    fig, path: str | os.PathLike, formats: Sequence[str] = ("png", "pdf", "svg"), dpi: int = 200
) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats``, atomically; closes the figure."""
    import matplotlib.pyplot as plt

    written = []
    try:
        for fmt in formats:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, dpi=dpi)
            written.append(write_bytes_atomic(Path(path).with_suffix(f".{fmt}"), buffer.getvalue()))
    finally:
        plt.close(fig)
    return written
