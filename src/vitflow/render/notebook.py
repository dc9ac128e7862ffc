"""Jupyter display of results (an animated attention flow) and a matplotlib ``show`` helper."""

from __future__ import annotations

import base64
import html

import numpy as np

from vitflow.render.animation import encode_gif, label_frame
from vitflow.render.colormap import apply_colormap
from vitflow.render.normalize import to_uint8


def result_html(result, index: int = 0, size: int = 160, mode: str = "sigmoid") -> str:
    """HTML for a result: a summary line and image ``index``'s attention flow as an animated GIF
    (heatmaps alone: results hold maps, not images; ``show`` overlays them on an image)."""
    heat = to_uint8(result.maps[index], size=(size, size), mode=mode)
    frames = [label_frame(apply_colormap(h), f"block {b + 1}/{len(heat)}") for b, h in enumerate(heat)]
    gif = base64.b64encode(encode_gif(frames, duration_ms=400)).decode("ascii")
    targets = ", ".join(str(int(t)) for t in result.target[:8]) + (" ..." if len(result) > 8 else "")
    summary = (
        f"DAAMResult: {len(result)} image(s), {result.num_blocks} blocks, "
        f"grid {result.grid[0]}x{result.grid[1]}, {result.prefix_tokens} prefix token(s); targets {targets}"
    )
    return (
        f"<div><p style='font-family:monospace'>{html.escape(summary)}</p>"
        f"<img src='data:image/gif;base64,{gif}' alt='attention flow of image {index}'></div>"
    )


def show(
    result, image=None, index: int = 0, blocks=None, per_block: bool = False, mode: str = "global", **kwargs
):
    """Plot image ``index``'s attention flow with matplotlib and return the figure.

    Args:
        result: a ``DAAMResult``.
        image: the input the model saw (``(H, W, 3)`` uint8 or float in [0, 1], PIL, or a
            ``(3, H, W)`` tensor in [0, 1]); without it the maps are drawn on grey.
        blocks: 1-based blocks to show (default all); ``per_block`` adds the per-block maps.
        kwargs: passed to ``flow_figure`` (``cmap``, ``title``, ...).
    """
    from vitflow.render.figure import flow_figure

    if image is None:
        h, w = result.grid
        image = np.full((16 * h, 16 * w, 3), 128, np.uint8)
    return flow_figure(
        image,
        result.maps[index],
        result.block_maps[index] if per_block else None,
        blocks=blocks,
        mode=mode,
        **kwargs,
    )
