"""Reading image files with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class ImageLoadError(ValueError):
    """An image file is missing, unreadable or not an image."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """The file at ``path`` as an RGB PIL image, fully decoded (so corruption shows here)."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{path}: unreadable or corrupt image ({error})") from None
