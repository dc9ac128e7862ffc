"""Rendering: display normalisation, colormaps, overlays, animation. Takes maps, returns pixels."""

from vitflow.render.animation import encode_gif, label_frame
from vitflow.render.colormap import apply_colormap, colormap_lut
from vitflow.render.html import index_html, viewer_html
from vitflow.render.normalize import MODES, resize_uint8, scale_to_uint8, to_uint8
from vitflow.render.notebook import result_html, show
from vitflow.render.overlay import image_to_uint8, overlay

__all__ = [
    "MODES",
    "apply_colormap",
    "colormap_lut",
    "encode_gif",
    "image_to_uint8",
    "label_frame",
    "index_html",
    "overlay",
    "resize_uint8",
    "result_html",
    "scale_to_uint8",
    "show",
    "to_uint8",
    "viewer_html",
]
