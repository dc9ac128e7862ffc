"""Inputs: image files and each model's own preprocessing."""

from vitflow.data.images import ImageLoadError, load_image
from vitflow.data.preprocess import Preprocessing

__all__ = ["ImageLoadError", "Preprocessing", "load_image"]
