"""Where the model's input came from in the original image, and the picture maps are drawn on.

A model sees a crop of the photo (resized, centre-cropped, sometimes squashed); maps live on
that crop's patch grid. To draw them on the photo at its own size, ``crop_box`` finds the
crop's rectangle in the original by *probing the model's own transform*: it transforms an image
whose red channel is a ramp across x and green a ramp down y, and fits the affine map from output
pixels to input pixels. That works for every family's preprocessing (timm, Hugging Face
processors, torchvision, open_clip, your own) without knowing how it is written; a transform
that is not a resize-and-crop (a pad, a rotation) fails the fit and the picture falls back to
the crop.

``Display`` is the picture: the original scaled to the display size, and the box in its
pixels. Maps are resized into the box; outside it the photo is shown dimmed, since the model did
not see it. The crop view is the same with the box covering the whole picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitflow.render.colormap import colormap_lut_uint8, uint8_heatmap
from vitflow.render.normalize import resize_uint8, to_uint8
from vitflow.render.overlay import FADE, check_blend, image_to_uint8

#: default display size: the long side of the picture, unless the original is between these. Not
#: enlarged above a ViT's usual input (224 px): the viewer enlarges small pictures on the screen for
#: free, and encoding an enlarged copy cost more than the model (issue 22: a 224 px scene drawn at
#: 512 px took 7.5 ms a picture, at its own size 3.0). Larger photos are reduced by the smallest
#: whole factor that brings them to at most 768 px (``reduction``): a 1600 px photo is drawn at 534
#: px, a 1000 px one at 500.
DISPLAY_MIN, DISPLAY_MAX = 224, 768
DIM = 0.45  # brightness outside the model's crop


@dataclass(frozen=True)
class Box:
    """A rectangle in pixel coordinates (continuous: pixel ``i`` spans ``[i, i + 1)``); it may
    reach outside the image it refers to."""

    top: float
    left: float
    height: float
    width: float

    def scaled(self, factor_y: float, factor_x: float) -> Box:
        return Box(self.top * factor_y, self.left * factor_x, self.height * factor_y, self.width * factor_x)


def _fit(values: np.ndarray) -> tuple[float, float, float]:
    """``values[c]`` (output pixel ``c``) is the ramp's input coordinate at the centre of what
    it samples: ``start + scale * (c + 0.5) - 0.5``. The first and last pixels are left out
    (interpolation clamps at the border). Returns ``(start, scale, worst residual)``."""
    c = np.arange(len(values), dtype=np.float64)
    keep = slice(1, -1) if len(values) > 4 else slice(None)
    slope, intercept = np.polyfit(c[keep], values[keep], 1)
    residual = float(np.abs(values[keep] - (slope * c[keep] + intercept)).max())
    return intercept + 0.5 - 0.5 * slope, slope, residual


def crop_box(
    preprocess: Callable[[Image.Image], torch.Tensor],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    size: tuple[int, int],
) -> Box | None:
    """The rectangle of an original of ``size = (H, W)`` that ``preprocess`` turns into the
    model's input, or ``None`` when the transform is not a resize-and-crop (the fit is off by
    more than two ramp steps)."""
    height, width = size
    probe = np.zeros((height, width, 3), dtype=np.uint8)
    probe[..., 0] = np.round(np.arange(width) * 255.0 / max(width - 1, 1))[None, :]
    probe[..., 1] = np.round(np.arange(height) * 255.0 / max(height - 1, 1))[:, None]
    out = preprocess(Image.fromarray(probe))
    if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[0] < 2:
        return None
    scale = torch.tensor(std[:2], dtype=torch.float64)[:, None, None]
    shift = torch.tensor(mean[:2], dtype=torch.float64)[:, None, None]
    pixels = out[:2].double() * scale + shift  # back to [0, 1]
    left, scale_x, error_x = _fit(pixels[0].mean(dim=0).numpy() * (width - 1))
    top, scale_y, error_y = _fit(pixels[1].mean(dim=1).numpy() * (height - 1))
    if error_x > 2 * width / 255 + 1 or error_y > 2 * height / 255 + 1 or scale_x <= 0 or scale_y <= 0:
        return None
    return Box(float(top), float(left), float(scale_y * out.shape[1]), float(scale_x * out.shape[2]))


#: steps of a torchvision ``Compose`` that change values but not geometry
_PER_PIXEL = frozenset({"ToTensor", "MaybeToTensor", "PILToTensor", "ConvertImageDtype", "Normalize",
                        "ToImage", "ToDtype"})  # fmt: skip


def _resized(size: int | Sequence[int], height: int, width: int) -> tuple[int, int] | None:
    """torchvision ``Resize``'s output ``(H, W)`` (one number: the short side, the long one
    truncated as torchvision does; two: both)."""
    sizes = [int(v) for v in size] if isinstance(size, Sequence) else [int(size)]
    if len(sizes) == 2:
        return sizes[0], sizes[1]
    if len(sizes) != 1:
        return None
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = sizes[0], int(sizes[0] * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def composed_box(transform: object, size: tuple[int, int]) -> Box | None:
    """``crop_box`` without transforming anything, for a torchvision ``Compose`` of ``Resize``,
    ``CenterCrop`` and per-pixel steps (timm's evaluation transform): the rectangle follows from
    the sizes alone. ``None`` for any other transform (then it is probed)."""
    from torchvision import transforms as tv

    steps = getattr(transform, "transforms", None)
    if type(transform) is not tv.Compose or not steps:
        return None
    height, width = size
    top, left, scale_y, scale_x = 0.0, 0.0, 1.0, 1.0  # original = corner + scale * current
    for step in steps:
        if type(step) is tv.Resize:
            if step.max_size is not None:
                return None
            new = _resized(step.size, height, width)
            if new is None:
                return None
            scale_y, scale_x = scale_y * height / new[0], scale_x * width / new[1]
            height, width = new
        elif type(step) is tv.CenterCrop:
            crop_h, crop_w = (int(v) for v in step.size)
            if crop_h > height or crop_w > width:  # padded first: probe it
                return None
            crop_top, crop_left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
            top, left = top + scale_y * crop_top, left + scale_x * crop_left
            height, width = crop_h, crop_w
        elif type(step).__name__ not in _PER_PIXEL:
            return None
    return Box(top, left, scale_y * height, scale_x * width)


class CropBoxes:
    """``crop_box`` for one preprocessing, shared by threads (the pipeline's writers, the app's
    requests): from the sizes alone where the transform is a resize-and-crop ``composed_box``
    reads (nothing kept), else probed once per original size and kept (probing transforms an
    image as large as the photo)."""

    def __init__(self, preprocessing) -> None:
        import threading

        self.preprocessing, self._lock = preprocessing, threading.Lock()
        self._boxes: dict[tuple, Box | None] = {}

    def box(self, height: int, width: int) -> Box | None:
        pre = self.preprocessing
        box = composed_box(pre.transform, (height, width))  # from the sizes: microseconds
        if box is not None:
            return box
        with self._lock:
            if (height, width) not in self._boxes:
                self._boxes[(height, width)] = crop_box(pre, pre.mean, pre.std, (height, width))
            return self._boxes[(height, width)]


def resized(picture: Image.Image | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An RGB picture (PIL or ``(H, W, 3)`` uint8) at ``shape = (H', W')``, antialiased: bilinear
    when reduced, bicubic when enlarged. Pillow's filters, run by torch's uint8 kernels in half
    of Pillow's time or less (1600 px photo to 1024: 5.6 against 9.9 ms; 224 px to 512: 1.2
    against 2.3 ms), within 1-2 grey levels of Pillow's result. For the pictures only: the model's
    input is made by its own transform."""
    pixels = np.asarray(picture, dtype=np.uint8)
    if pixels.shape[:2] == tuple(shape):
        return pixels
    if not pixels.flags.writeable:  # torch takes only writable memory (Pillow's arrays are not)
        pixels = pixels.copy()
    mode = "bilinear" if shape[0] * shape[1] < pixels.shape[0] * pixels.shape[1] else "bicubic"
    out = F.interpolate(torch.from_numpy(pixels).permute(2, 0, 1)[None], size=tuple(shape), mode=mode,
                        antialias=True)  # fmt: skip
    return out[0].permute(1, 2, 0).contiguous().numpy()


def reduction(original: tuple[int, int], requested: int | None = None) -> int:
    """The whole factor ``n`` a photo larger than ``DISPLAY_MAX`` is reduced by at the default
    display size (1: not reduced): the smallest that brings its long side to ``DISPLAY_MAX`` or
    less. Each picture pixel is then the mean of an ``n x n`` block of the photo's (Pillow's
    ``reduce``), aligned with them: 4x faster than an antialiased resize to 768 px (0.7 against
    3.2 ms for a 949 px photo, 1.9 against 7.9 for a 1600 px one; best of 5, 2 cores), and every
    picture after it (overlay, two JPEGs) has a half to a third fewer pixels to encode."""
    longest = max(original)
    if requested is not None or longest <= DISPLAY_MAX:
        return 1
    return -(-longest // DISPLAY_MAX)


def display_size(original: tuple[int, int], requested: int | None = None) -> tuple[int, int]:
    """``(H, W)`` of the picture: the long side ``requested``; else the original's, enlarged to
    ``DISPLAY_MIN`` when smaller (tiny images, so labels and maps stay readable) and divided by
    ``reduction`` when larger than ``DISPLAY_MAX`` (rounded up, as Pillow's ``reduce``)."""
    height, width = original
    factor_n = reduction(original, requested)
    if factor_n > 1:
        return -(-height // factor_n), -(-width // factor_n)
    longest = max(height, width)
    target = requested if requested is not None else max(longest, DISPLAY_MIN)
    factor = target / longest
    return max(1, round(height * factor)), max(1, round(width * factor))


@dataclass(frozen=True)
class Display:
    """The picture maps are drawn on: ``image`` ``(H, W, 3)`` uint8 and the model's crop in its
    pixels (``box``)."""

    image: np.ndarray
    box: Box

    @classmethod
    def of_crop(cls, crop: np.ndarray, size: int | None = None) -> Display:
        """The model's input itself (``--on crop``), scaled to the display size."""
        crop = image_to_uint8(crop)
        shape = display_size(crop.shape[:2], size)
        return cls(resized(crop, shape), Box(0, 0, shape[0], shape[1]))

    @classmethod
    def of_original(cls, original, box: Box, size: int | None = None) -> Display:
        """The original photo at the display size (or a ``Shown`` copy of it already made),
        with the crop's box (original pixels) scaled."""
        shown = original if isinstance(original, Shown) else Shown.of(original, size)
        height, width = shown.original_size
        shape = shown.image.shape[:2]
        scale_y, scale_x = shown.scale or (shape[0] / height, shape[1] / width)
        return cls(shown.image, box.scaled(scale_y, scale_x))

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def box_pixels(self) -> tuple[int, int, int, int]:
        """The box rounded to pixels: top, left, bottom, right (may exceed the picture)."""
        b = self.box
        top, left = round(b.top), round(b.left)
        return top, left, top + max(1, round(b.height)), left + max(1, round(b.width))

    def inside_slices(self) -> tuple[slice, slice]:
        """``(rows, cols)``: the pixels the model saw, as slices of the picture."""
        top, left, bottom, right = self.box_pixels()
        return slice(max(top, 0), max(bottom, 0)), slice(max(left, 0), max(right, 0))

    def inside(self) -> np.ndarray:
        """``(H, W)`` bool: the pixels the model saw."""
        mask = np.zeros(self.size, dtype=bool)
        mask[self.inside_slices()] = True
        return mask

    def place(self, heat: np.ndarray) -> np.ndarray:
        """``(..., h, w)`` uint8 heatmaps on the crop -> ``(..., H, W)`` on the picture (bilinear into
        the box, 0 outside it)."""
        heat = np.asarray(heat)
        lead = heat.shape[:-2]
        flat = heat.reshape(-1, *heat.shape[-2:])
        top, left, bottom, right = self.box_pixels()
        height, width = self.size
        out = np.zeros((flat.shape[0], height, width), dtype=np.uint8)
        rows = slice(max(top, 0), min(bottom, height))
        cols = slice(max(left, 0), min(right, width))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return out.reshape(*lead, height, width)
        for i, one in enumerate(flat):
            big = one
            if one.shape != (bottom - top, right - left):
                big = np.asarray(
                    Image.fromarray(one).resize((right - left, bottom - top), Image.Resampling.BILINEAR)
                )
            out[i, rows, cols] = big[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
        return out.reshape(*lead, height, width)

    def box_size(self) -> tuple[int, int]:
        top, left, bottom, right = self.box_pixels()
        return bottom - top, right - left

    def block_heat(self, block_maps: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(L, h, w)`` per-block maps on their common scale -> ``(L, H, W)`` uint8 on the picture."""
        from vitflow.render.normalize import scale_to_uint8

        return self.place(scale_to_uint8(block_maps, size=self.box_size()))

    def heat(
        self, maps: torch.Tensor | np.ndarray, mode: str = "sigmoid", blocks: Sequence[int] | None = None
    ) -> np.ndarray:
        """``(L, h, w)`` accumulated maps -> ``(L, H, W)`` uint8 heatmaps on the picture, with display
        normalisation ``mode`` (method.md section 6) computed on the whole sequence; ``blocks``
        (0-based): only those blocks' heatmaps, ``(len(blocks), H, W)``, the same pixels."""
        top, left, bottom, right = self.box_pixels()
        heat = to_uint8(maps, mode=mode)  # on the grid: the normalisation needs every block
        if blocks is not None:
            heat = heat[list(blocks)]
        return self.place(resize_uint8(heat, (bottom - top, right - left)))

    def scaled(self, long_side: int) -> Display:
        """The same picture with its long side at most ``long_side`` (the animation's frames)."""
        height, width = self.size
        factor = long_side / max(height, width)
        if factor >= 1:
            return self
        shape = max(1, round(height * factor)), max(1, round(width * factor))
        return Display(resized(self.image, shape), self.box.scaled(shape[0] / height, shape[1] / width))

    def overlay(
        self,
        heat: np.ndarray,
        alpha: float = 0.4,
        image_weight: float = 0.8,
        cmap: str = "jet",
        dim: float = DIM,
        blend: str = "fade",
    ) -> np.ndarray:
        """``alpha * cmap(heat) + image_weight * image`` where the model looked, faded to the photo
        where the map is low (``blend="fade"``; ``"paper"``: not faded, see ``render.overlay.BLENDS``);
        the photo dimmed to ``dim`` elsewhere. ``heat``: ``(H, W)`` uint8 from ``heat``.

        The same float32 arithmetic as written, done once per (heat level, pixel value) pair
        instead of once per pixel (an overlay per frame is most of a bundle's cost): every output
        value is a function of the heat level and the photo's value in that channel, so the
        picture is three lookups in ``(256 * 256,)`` uint8 tables, byte for byte the per-pixel
        result."""
        heat = uint8_heatmap(heat)
        if heat.shape != self.size:
            raise ValueError(f"heat must be {self.size} (the picture's size), got {heat.shape}")
        table = _blend_table(cmap, float(alpha), float(image_weight), check_blend(blend))
        image = self.image
        rows, cols = self.inside_slices()
        out = np.empty_like(image)
        height, width = self.size
        dimmed = _dim_table(float(dim))
        # outside the crop: the photo dimmed (the bands above, below, left and right of the box)
        for band in ((slice(0, rows.start), slice(None)), (slice(rows.stop, height), slice(None)),
                     (rows, slice(0, cols.start)), (rows, slice(cols.stop, width))):  # fmt: skip
            out[band] = np.take(dimmed, image[band])
        inner, target = image[rows, cols], out[rows, cols]
        if inner.size:
            shifted = heat[rows, cols].astype(np.uint16) << 8
            index = np.empty(shifted.shape, np.uint16)
            channel_out = np.empty(shifted.shape, np.uint8)
            for channel in range(3):  # table index heat * 256 + value, one channel at a time
                np.bitwise_or(shifted, inner[..., channel], out=index)
                target[..., channel] = np.take(table[channel], index, out=channel_out)
        return out


@dataclass(frozen=True)
class Shown:
    """A photo at its display size (``image``, ``(H, W, 3)`` uint8) and the size it had
    (``original_size``), so the crop's box can be placed without the original; ``scale``: picture
    pixels per photo pixel ``(y, x)`` (``None``: the ratio of the sizes; ``1 / n`` for a photo
    reduced by a whole factor, whose last row and column may cover fewer pixels)."""

    image: np.ndarray
    original_size: tuple[int, int]
    scale: tuple[float, float] | None = None

    @classmethod
    def of(cls, original, size: int | None = None) -> Shown:
        had = original_size(original)
        if isinstance(original, Image.Image):
            photo = original if original.mode == "RGB" else original.convert("RGB")
        else:
            photo = Image.fromarray(image_to_uint8(original))
        factor = reduction(had, size)
        if factor > 1:
            return cls(np.asarray(photo.reduce(factor)), had, (1 / factor, 1 / factor))
        return cls(resized(photo, display_size(had, size)), had)


class ShownCopies:
    """The ``extra`` of an explain run's ``ImageFiles``: each photo at
    its display size, made in the decoding worker (picklable), so the writers neither decode the
    file again nor resize the full photo."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def __call__(self, index: int, image: Image.Image) -> Shown:
        return Shown.of(image, self.size)


@lru_cache(maxsize=32)
def _weighted_lut(cmap: str, alpha: float) -> np.ndarray:
    """``alpha * cmap`` as a ``(256, 3)`` float32 table: each product exactly as the overlay forms it."""
    return alpha * colormap_lut_uint8(cmap).astype(np.float32)


@lru_cache(maxsize=32)
def _faded_luts(cmap: str, alpha: float, image_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """The fade as two tables by heat level, in float32 (the viewer forms the same): the colour
    ``t * (alpha * cmap)`` ``(256, 3)`` and the photo's weight ``1 + t * (image_weight - 1)``
    ``(256,)``, ``t = heat / 255``."""
    weight = np.float32(1) + FADE * (np.float32(image_weight) - np.float32(1))
    return FADE[:, None] * _weighted_lut(cmap, alpha), weight


@lru_cache(maxsize=32)
def _blend_table(cmap: str, alpha: float, image_weight: float, blend: str) -> np.ndarray:
    """``(3, 256 * 256)`` uint8: ``[c, heat * 256 + value]`` is the overlay's channel ``c`` at that
    heat level over a photo value ``value``, formed in float32 exactly as the per-pixel sum was
    (colour table plus weight times value, clipped to [0, 255], rounded half to even)."""
    values = np.arange(256, dtype=np.float32)
    if blend == "fade":  # t * alpha * cmap + (1 + t * (image_weight - 1)) * image
        colour, weight = _faded_luts(cmap, alpha, image_weight)
    else:
        colour, weight = _weighted_lut(cmap, alpha), np.full(256, image_weight, dtype=np.float32)
    mixed = colour.T[:, :, None] + (weight[:, None] * values)[None]  # (3, heat, value)
    np.clip(mixed, 0, 255, out=mixed)
    return np.round(mixed, out=mixed).astype(np.uint8).reshape(3, 256 * 256)


@lru_cache(maxsize=8)
def _dim_table(dim: float) -> np.ndarray:
    """``(256,)`` uint8: a photo value outside the crop, dimmed to ``dim`` (float32, rounded half to
    even, clipped to [0, 255])."""
    dimmed = np.arange(256, dtype=np.float32) * np.float32(dim)
    return np.round(np.clip(dimmed, 0, 255)).astype(np.uint8)


def original_size(image) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    array = np.asarray(image)
    return array.shape[0], array.shape[1]


def as_display(image) -> Display:
    """A ``Display`` as given, or the picture the maps cover entirely (an image the model saw,
    drawn at its own size: what every renderer did before placement existed)."""
    if isinstance(image, Display):
        return image
    rgb = image_to_uint8(image)
    return Display(rgb, Box(0.0, 0.0, float(rgb.shape[0]), float(rgb.shape[1])))
