"""Rendering: display normalisation, colormaps, overlays, animation. Takes maps, returns pixels."""

from vitflow.render.animation import encode_gif, label_frame
from vitflow.render.colormap import apply_colormap, colormap_lut
from vitflow.render.normalize import MODES, to_uint8
from vitflow.render.overlay import image_to_uint8, overlay

__all__ = [
    "MODES",
    "apply_colormap",
    "colormap_lut",
    "encode_gif",
    "image_to_uint8",
    "label_frame",
    "overlay",
    "to_uint8",
]
