"""Frames of the attention flow, labelled with their block, and the animated GIF."""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def label_frame(frame: np.ndarray, text: str) -> Image.Image:
    """Write ``text`` in the top-left corner of an ``(H, W, 3)`` uint8 frame, on a dark box. The
    font follows the frame's size; text that would not fit the width is shortened with an
    ellipsis rather than cut off."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = _font(max(10, min(image.height, image.width) // 22))
    room = image.width - 8
    if draw.textlength(text, font=font) > room:
        while text and draw.textlength(text + "…", font=font) > room:
            text = text[:-1]
        text = text + "…"
    left, top, right, bottom = draw.textbbox((4, 2), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255), font=font)
    return image


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size``, loaded once (loading costs more than drawing a label)."""
    return ImageFont.load_default(size=size)


def encode_gif(frames: Sequence[Image.Image], duration_ms: int = 400, loop: int = 0) -> bytes:
    """Animated GIF bytes; the last frame (the final explanation) is held three times as long.

    One 256-colour palette for every frame, made once by fast octree quantisation of every
    frame's pixels (every other row and column), so the frames do not flicker between palettes.
    Each frame is mapped onto it with Floyd-Steinberg error diffusion, so gradients do not band;
    a pixel that is the same as in the frame before keeps that frame's palette index, so the still
    parts of the picture (the photo where the map is low) do not shimmer as the diffused error
    changes with the parts that move."""
    if not frames:
        raise ValueError("encode_gif needs at least one frame")
    rgb = [np.asarray(frame.convert("RGB")) for frame in frames]
    sample = np.concatenate([pixels[::2, ::2] for pixels in rgb])
    palette = Image.fromarray(sample).quantize(256, method=Image.Quantize.FASTOCTREE)
    colours = palette.getpalette() or []
    indexed: list[Image.Image] = []
    before: np.ndarray | None = None
    for k, pixels in enumerate(rgb):
        image = Image.fromarray(pixels).quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
        if before is not None:
            index = np.asarray(image).copy()
            still = (pixels == rgb[k - 1]).all(-1)
            index[still] = before[still]
            image = Image.fromarray(index, mode="P")
            image.putpalette(colours)
        before = np.asarray(image)
        indexed.append(image)
    frames = indexed
    durations = [duration_ms] * (len(frames) - 1) + [3 * duration_ms]
    buffer = io.BytesIO()
    frames[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=list(frames[1:]),
        duration=durations,
        loop=loop,
        disposal=1,
        optimize=False,
    )
    return buffer.getvalue()
