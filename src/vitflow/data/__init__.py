"""Inputs: image files and each model's own preprocessing."""

from vitflow.data.images import ImageLoadError, LoadedImage, collect_images, load_image, read_image
from vitflow.data.preprocess import Preprocessing

__all__ = ["ImageLoadError", "LoadedImage", "Preprocessing", "collect_images", "load_image", "read_image"]
