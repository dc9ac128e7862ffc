"""Procedural scenes with known evidence: one (or two) objects on a cluttered background.

Every scene is fully determined by ``(seed, index)``. A class is a *shape with an internal
pattern* (e.g. a striped disc); colours are drawn from the same distribution for every class and
every pattern covers half of its object, whose area is drawn independently of the class, so
neither colour statistics nor pixel positions predict the class (``scripts/check_scene_bias.py``
measures it). The background has a colour gradient, a faint plaid texture, lines, pixel noise and
distractor shapes (elongated ellipses and irregular blobs in flat colours) that belong to no
class. Objects come with exact pixel masks and bounding boxes.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# class name -> (shape, pattern); each pattern is shared by two shapes, so neither alone decides
CLASSES: tuple[tuple[str, str, str], ...] = (
    ("striped_disc", "disc", "stripes"),
    ("checkered_square", "square", "checker"),
    ("dotted_triangle", "triangle", "dots"),
    ("ringed_star", "star", "rings"),
    ("striped_cross", "cross", "stripes"),
    ("checkered_arrow", "arrow", "checker"),
    ("dotted_crescent", "crescent", "dots"),
    ("ringed_ell", "ell", "rings"),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _, _ in CLASSES)


def _regular(n: int, start: float = math.pi / 2) -> list[tuple[float, float]]:
    return [(math.cos(start + 2 * math.pi * i / n), math.sin(start + 2 * math.pi * i / n)) for i in range(n)]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for i in range(2 * points):
        radius = 1.0 if i % 2 == 0 else inner
        angle = math.pi / 2 + math.pi * i / points
        out.append((radius * math.cos(angle), radius * math.sin(angle)))
    return out


# polygons in unit coordinates (object frame, roughly within the unit disc)
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)],
    "triangle": _regular(3),
    "star": _star(),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25), (-1, 0.25)],
    "ell": [(-0.7, -1), (-0.15, -1), (-0.15, 0.45), (0.7, 0.45), (0.7, 1), (-0.7, 1)],
}  # fmt: skip


def _unit_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Analytic shapes in object coordinates; ``None`` for polygons (drawn with PIL)."""
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2)
    return None


def _polygon_area(points: list[tuple[float, float]]) -> float:
    return 0.5 * abs(
        sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True))
    )


def _unit_area(shape: str) -> float:
    if shape in _POLYGONS:
        return _polygon_area(_POLYGONS[shape])
    grid = np.linspace(-1, 1, 801)
    u, v = np.meshgrid(grid, grid)
    mask = _unit_mask(shape, u, v)
    assert mask is not None  # every shape without a polygon has an analytic mask
    return float(mask.mean() * 4.0)


_UNIT_AREAS = {shape: _unit_area(shape) for shape in ("disc", "crescent", *_POLYGONS)}
# radius of the smallest centred disc holding each unit shape
_EXTENTS = {"disc": 1.0, "crescent": 1.0} | {
    shape: max(math.hypot(x, y) for x, y in points) for shape, points in _POLYGONS.items()
}


def _pattern(pattern: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Second-colour pixels of a pattern in object coordinates; each covers half the plane."""
    if pattern == "stripes":
        return np.floor(u / period) % 2 == 0
    if pattern == "checker":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    if pattern == "dots":  # radius sqrt(0.5 / pi) of the lattice cell: half coverage
        du = u / period - np.round(u / period)
        dv = v / period - np.round(v / period)
        return du * du + dv * dv <= 0.5 / math.pi
    if pattern == "rings":
        return np.floor(np.sqrt(u * u + v * v) / period) % 2 == 0
    raise ValueError(pattern)


@dataclass(frozen=True)
class Scene:
    """``image`` ``(H, W, 3)`` uint8; per object ``masks`` ``(K, H, W)`` bool, ``labels`` ``(K,)``,
    ``boxes`` ``(K, 4)`` as ``[x0, y0, x1, y1]`` pixel bounds (x1, y1 exclusive)."""

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray

    @property
    def label(self) -> int:
        return int(self.labels[0])


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _contrasting_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        a, b = _random_colour(rng), _random_colour(rng)
        if np.abs(a - b).sum() > 180:
            return a, b


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * math.pi)
    t = np.cos(angle) * xs + np.sin(angle) * ys
    t = (t - t.min()) / (t.max() - t.min() + 1e-9)
    a, b = _random_colour(rng), _random_colour(rng)
    image = a * (1 - t[..., None]) + b * t[..., None]
    for _ in range(2):  # faint plaid texture
        freq = rng.uniform(3, 12)
        phase_angle = rng.uniform(0, 2 * math.pi)
        wave = np.sin(
            2 * math.pi * freq * (np.cos(phase_angle) * xs + np.sin(phase_angle) * ys) + rng.uniform(0, 6.3)
        )
        image += rng.uniform(8, 25) * wave[..., None] * rng.choice([-1, 1], 3)
    return image


def _draw_clutter(rng: np.random.Generator, canvas: Image.Image, size: int) -> None:
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(2, 6)):  # lines
        points = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(
            points,
            fill=tuple(int(c) for c in _random_colour(rng)),
            width=int(rng.integers(1, max(2, size // 75))),
        )
    for _ in range(rng.integers(3, 7)):  # distractors: elongated ellipses and irregular blobs
        colour = tuple(int(c) for c in _random_colour(rng))
        cx, cy = rng.uniform(0, size, 2)
        radius = rng.uniform(0.04, 0.09) * size
        if rng.random() < 0.5:
            aspect = rng.uniform(2.2, 4.0)
            angle = rng.uniform(0, math.pi)
            long_axis, short_axis = radius * aspect, radius
            cos, sin = math.cos(angle), math.sin(angle)
            pts = [
                (cx + long_axis * math.cos(t) * cos - short_axis * math.sin(t) * sin,
                 cy + long_axis * math.cos(t) * sin + short_axis * math.sin(t) * cos)
                for t in np.linspace(0, 2 * math.pi, 32, endpoint=False)
            ]  # fmt: skip
        else:
            count = int(rng.integers(6, 10))
            angles = np.sort(rng.uniform(0, 2 * math.pi, count))
            radii = radius * rng.uniform(0.5, 1.5, count)
            pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]
        draw.polygon(pts, fill=colour)


def _object_mask(shape: str, centre: tuple[float, float], scale: float, angle: float, size: int):
    """Mask and object-frame coordinates ``(u, v)`` for a shape placed in a ``size`` image."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xs - centre[0], ys - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * dx + sin * dy) / scale
    v = (-sin * dx + cos * dy) / scale
    mask = _unit_mask(shape, u, v)
    if mask is None:
        points = [
            (centre[0] + scale * (cos * px - sin * py), centre[1] + scale * (sin * px + cos * py))
            for px, py in _POLYGONS[shape]
        ]
        layer = Image.new("L", (size, size), 0)
        ImageDraw.Draw(layer).polygon(points, fill=1)
        mask = np.asarray(layer, dtype=bool)
    return mask, u, v


def _place(
    rng, size: int, diameter: float, taken: list[tuple[float, float, float]]
) -> tuple[float, float] | None:
    """A centre for a disc of ``diameter`` inside the image, clear of ``taken`` discs; ``None`` if
    200 random tries find none."""
    radius = diameter / 2
    for _ in range(200):
        centre = tuple(rng.uniform(radius * 1.15, size - radius * 1.15, 2))
        if all(math.dist(centre, (x, y)) > (radius + r) * 1.1 for x, y, r in taken):
            return centre
    return None


def generate_scene(seed: int, index: int, size: int = 224, objects: int = 1) -> Scene:
    """Scene ``index`` of the stream ``seed``: ``objects`` (1 or 2) objects of different classes.

    Object sizes (diameter of a disc of the same area) are 30-48% of the image with one object and
    18-26% with two.
    """
    if objects not in (1, 2):
        raise ValueError(f"objects must be 1 or 2, got {objects}")
    if size < 32:
        raise ValueError(f"scenes need at least 32 pixels, got {size}")
    rng = np.random.default_rng([seed, index, objects])
    labels = rng.choice(len(CLASSES), size=objects, replace=False)
    image = _background(rng, size)
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    _draw_clutter(rng, canvas, size)
    image = np.asarray(canvas).astype(np.float64)
    low, high = (0.30, 0.48) if objects == 1 else (0.28, 0.36)
    masks: list[np.ndarray] = []
    boxes: list[list[int]] = []
    taken: list[tuple[float, float, float]] = []
    for label in labels:
        _, shape, pattern = CLASSES[label]
        diameter = rng.uniform(low, high) * size
        centre = None
        while centre is None:
            area = math.pi * (diameter / 2) ** 2
            scale = math.sqrt(area / _UNIT_AREAS[shape])  # equal areas across shapes
            # single-object scenes place by the scale alone (kept so that the demo model's training
            # stream stays reproducible); two objects need the true extent so they never overlap
            radius = scale if objects == 1 else scale * _EXTENTS[shape]
            centre = _place(rng, size, 2 * radius, taken)
            diameter *= 0.9  # no room left for the second object: try it a little smaller
        taken.append((*centre, radius))
        mask, u, v = _object_mask(shape, centre, scale, rng.uniform(0, 2 * math.pi), size)
        first, second = _contrasting_pair(rng)
        period = rng.uniform(0.26, 0.34)
        fill = np.where(_pattern(pattern, u, v, period)[..., None], second, first)
        image = np.where(mask[..., None], fill, image)
        ys, xs = np.nonzero(mask)
        masks.append(mask)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    image = image + rng.normal(0, 6, image.shape)
    return Scene(
        image=np.clip(np.round(image), 0, 255).astype(np.uint8),
        masks=np.stack(masks),
        labels=np.asarray(labels, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.int64),
    )


def _save_png_atomic(array: np.ndarray, path: Path) -> None:
    from vitflow.atomic import write_bytes_atomic

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def write_scenes(out: str | os.PathLike, n: int, seed: int = 0, size: int = 224, objects: int = 1) -> dict:
    """Write ``n`` scenes: images in ImageFolder layout under ``out/images/<class>/scene_NNNNNN.png``
    (point dataset readers at ``out/images``), masks in ``out/masks/scene_NNNNNN_K.png`` (255 inside
    object K), and ``out/boxes.json`` (paths relative to ``out``).

    For two-object scenes the image goes in the folder of its first object's class; the manifest
    lists both objects.
    """
    scenes = (generate_scene(seed, index, size, objects) for index in range(n))
    meta = {"generator": "vitflow.data.scenes", "seed": seed, "size": size, "objects_per_scene": objects}
    return write_scene_folder(out, scenes, n, list(CLASS_NAMES), meta)


def write_scene_folder(
    out: str | os.PathLike, scenes: Iterable[Scene], n: int, classes: list[str], meta: dict
) -> dict:
    """Write ``n`` scenes from ``scenes`` in the layout of ``write_scenes`` (which
    ``vitflow evaluate --data`` reads), with ``classes`` naming the labels and ``meta`` recorded in
    the manifest; any scene source (synthetic or photographs with pasted objects) can use it."""
    from vitflow.atomic import write_json_atomic

    out = Path(out)
    entries = []
    width = max(6, len(str(n)))
    for index, scene in zip(range(n), scenes, strict=False):
        name = f"scene_{index:0{width}d}"
        image_path = Path("images") / classes[scene.label] / f"{name}.png"
        _save_png_atomic(scene.image, out / image_path)
        listed = []
        for k, (mask, label, box) in enumerate(zip(scene.masks, scene.labels, scene.boxes, strict=True)):
            mask_path = Path("masks") / f"{name}_{k}.png"
            _save_png_atomic(mask.astype(np.uint8) * 255, out / mask_path)
            listed.append({"label": int(label), "class": classes[label], "box": box.tolist(),
                           "mask": mask_path.as_posix()})  # fmt: skip
        entries.append({"id": name, "image": image_path.as_posix(), "objects": listed})
    manifest = {
        **meta,
        "classes": list(classes),
        "box_format": "x0, y0, x1, y1 in pixels, x1 and y1 exclusive",
        "scenes": entries,
    }
    write_json_atomic(out / "boxes.json", manifest)
    return manifest
