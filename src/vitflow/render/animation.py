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
    ellipsis rather than cut off.

    The box with its text does not depend on the frame beneath it (the box is opaque and the text
    lies inside it), so it is drawn once per text, font size and width and pasted (laying out and
    rendering a label cost more than the overlay of a 512 px frame)."""
    image = Image.fromarray(frame)
    image.paste(_label(text, max(10, min(image.height, image.width) // 22), image.width - 8), (0, 0))
    return image


@lru_cache(maxsize=256)
def _label(text: str, size: int, room: int) -> Image.Image:
    """The label box: white ``text`` (shortened to ``room`` pixels) at ``(4, 2)`` on black, the
    box reaching 4 pixels past the text (~40 KB for a 512 px frame, at most ~170 KB for a very
    long text on a 1024 px one, so the cache stays under ~45 MB). Never modified: pasted only."""
    font = _font(size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if draw.textlength(text, font=font) > room:
        while text and draw.textlength(text + "…", font=font) > room:
            text = text[:-1]
        text = text + "…"
    left, top, right, bottom = draw.textbbox((4, 2), text, font=font)
    # the rectangle (0, 0, right + 4, bottom + 4), both corners inclusive (Pillow's boxes are whole pixels)
    box = Image.new("RGB", (int(right) + 5, int(bottom) + 5), (0, 0, 0))
    ImageDraw.Draw(box).text((4, 2), text, fill=(255, 255, 255), font=font)
    return box


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size``, loaded once (loading costs more than drawing a label)."""
    return ImageFont.load_default(size=size)


#: the palette index of "as in the frame before" (GIF transparency over the kept frame)
_UNCHANGED = 255


def encode_gif(frames: Sequence[Image.Image], duration_ms: int = 400, loop: int = 0) -> bytes:
    """Animated GIF bytes; the last frame (the final explanation) is held three times as long.

    One palette of 255 colours for every frame, made once by fast octree quantisation of every
    frame's pixels (every other row and column), so the frames do not flicker between palettes.
    Each frame is mapped onto it with Floyd-Steinberg error diffusion, so gradients do not band;
    a pixel that is the same as in the frame before keeps that frame's colour, so the still parts
    of the picture (the photo where the map is low) do not shimmer as the diffused error changes
    with the parts that move. Those pixels are written as the 256th, transparent index over the
    kept frame, which makes the file smaller than an undithered one."""
    if not frames:
        raise ValueError("encode_gif needs at least one frame")
    rgb = [np.asarray(frame.convert("RGB")) for frame in frames]
    sample = np.concatenate([pixels[::2, ::2] for pixels in rgb])
    palette = Image.fromarray(sample).quantize(_UNCHANGED, method=Image.Quantize.FASTOCTREE)
    colours = (palette.getpalette() or [])[: 3 * _UNCHANGED]
    colours += [0] * (3 * 256 - len(colours))
    indexed: list[Image.Image] = []
    before: np.ndarray | None = None
    for k, pixels in enumerate(rgb):
        quantized = Image.fromarray(pixels).quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
        index = np.array(quantized)
        written = index
        if before is not None:
            changed = pixels != rgb[k - 1]
            still = ~(changed[..., 0] | changed[..., 1] | changed[..., 2])  # faster than .all(-1)
            index[still] = before[still]
            written = np.where(still, np.uint8(_UNCHANGED), index)
        before = index
        image = Image.fromarray(written, mode="P")
        image.putpalette(colours)
        if k:
            image.info["transparency"] = _UNCHANGED
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
        transparency=_UNCHANGED,
    )
    return buffer.getvalue()
