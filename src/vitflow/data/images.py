"""Reading image files from the real world with one-line errors.

Every image Pillow can open becomes an RGB image the model can take: EXIF orientation applied,
transparency composited on white, 16-bit and float samples scaled to 8 bits, palette, CMYK and
grayscale converted, the first frame of an animation. What was done is reported as notes.
Files Pillow cannot read raise ``ImageLoadError`` naming the file; so do images with more
pixels than ``max_pixels`` (a decompression-bomb guard, with the pixel count and how to allow
them).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jp2",
     ".ico", ".tga", ".jfif"}
)  # fmt: skip
#: Pillow's own default guard (``Image.MAX_IMAGE_PIXELS`` x 2, where it stops with an error)
MAX_PIXELS = 2 * 89_478_485
BACKGROUND = (255, 255, 255)


class ImageLoadError(ValueError):
    """An image file is missing, unreadable, not an image, or too large."""


@dataclass
class LoadedImage:
    """``image``: RGB; ``notes``: what was done to make it so (empty for a plain RGB file)."""

    image: Image.Image
    notes: list[str] = field(default_factory=list)


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode == "F":
            low, high = float(array.min()), float(array.max())
            array = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
            notes.append(f"float samples ({mode}) scaled from [{low:g}, {high:g}] to 8 bits")
        else:
            array = array / 257.0  # 16-bit: 65535 -> 255
            notes.append(f"16-bit samples ({mode}) scaled to 8 bits")
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        opaque = rgba.getchannel("A").getextrema()[0]  # one band: (min, max) numbers
        if opaque < 255:  # type: ignore[operator]  # Pillow types extrema for every band count
            notes.append("transparent pixels composited on white")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        if image.mode not in ("L", "1", "P"):  # grayscale and palette convert without loss
            notes.append(f"converted from {image.mode} to RGB")
        return image.convert("RGB")
    return image


def read_image(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> LoadedImage:
    """The file at ``path`` as an RGB image, fully decoded (so corruption shows here), with notes.

    Args:
        max_pixels: refuse images with more pixels (``None``: no limit).
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # the pixel limit is checked below with a message that says how to lift it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # e.g. corrupt EXIF
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                opened = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
            with opened as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageLoadError(
                        f"{path}: {width}x{height} = {width * height:,} pixels is more than the limit of "
                        f"{max_pixels:,} (a guard against decompression bombs); allow it with "
                        f"--max-pixels {width * height}"
                    )
                if width == 0 or height == 0:
                    raise ImageLoadError(f"{path}: the image is empty ({width}x{height} pixels)")
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    notes.append(f"animated ({frames} frames): the first frame is explained")
                image.load()
                orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
                if orientation not in (1, None):
                    notes.append(f"turned upright by its EXIF orientation ({orientation})")
                    image = ImageOps.exif_transpose(image)  # type: ignore[assignment]  # an Image, no longer the file
                return LoadedImage(_to_rgb(image, notes), notes)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImageLoadError(f"{path}: unreadable or corrupt image ({reason})") from None


def load_image(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """The file at ``path`` as an RGB PIL image (see ``read_image``, which also gives notes)."""
    return read_image(path, max_pixels).image


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The files to explain: each file as given (whatever its name, so a non-image is reported),
    and every file with an image suffix under each directory, recursively, in sorted order.
    Hidden files and folders inside directories are skipped."""
    found: list[Path] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [
                    Path(root) / f
                    for f in sorted(files)
                    if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
                ]
        else:
            found.append(path)
    return found
