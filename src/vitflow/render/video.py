"""MP4 of the attention flow through imageio-ffmpeg (a pip package that carries its own ffmpeg)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width (H.264 with yuv420p needs them) by repeating the edge."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else frame


def write_mp4(
    frames: Sequence[Image.Image | np.ndarray], path: str | os.PathLike, fps: float = 2.5, hold_last: int = 3
) -> Path:
    """Encode RGB frames as H.264 MP4, atomically; the last frame (the explanation) is shown
    ``hold_last`` times as long as the others."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ImportError("MP4 output needs imageio-ffmpeg: pip install 'vitflow[cli]'") from None
    if not frames:
        raise ValueError("write_mp4 needs at least one frame")
    arrays = [
        _even(np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame))
        for frame in frames
    ]
    arrays += [arrays[-1]] * max(0, hold_last - 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        height, width = arrays[0].shape[:2]
        writer = imageio_ffmpeg.write_frames(
            tmp, (width, height), fps=fps, macro_block_size=1, quality=8, ffmpeg_log_level="error"
        )
        writer.send(None)
        for array in arrays:
            writer.send(np.ascontiguousarray(array))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
