"""What an evaluation explains: one item per object (its image, class and mask) from a scenes
folder, or one per image from an ImageFolder tree, with masks from box annotations."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Item:
    """One explained object: its image, class, mask and a name unique in the dataset. ``mask`` is
    an ``(H, W)`` bool array at the image's size, or where to read it (a mask image, 255 inside,
    or an ILSVRC box annotation ``.xml``), read when the item is: a dataset's masks are never all
    in memory at once."""

    path: Path
    target: int
    mask: np.ndarray | Path | None
    name: str


def load_mask(source: np.ndarray | Path | None) -> np.ndarray | None:
    """An ``Item``'s mask as an ``(H, W)`` bool array."""
    if source is None or isinstance(source, np.ndarray):
        return source
    source = Path(source)
    if source.suffix.lower() == ".xml":
        return boxes_mask(source)
    with Image.open(source) as picture:
        return np.asarray(picture.convert("L")) > 0


def boxes_mask(xml_path: Path) -> np.ndarray:
    """The union of an ImageNet (ILSVRC / PASCAL VOC) annotation's boxes as an ``(H, W)`` mask."""
    import xml.etree.ElementTree as ET

    def number(node: ET.Element, path: str) -> int:
        text = node.findtext(path)
        if text is None:
            raise ValueError(f"{xml_path}: no <{path}> in the box annotation")
        return int(float(text))

    root = ET.parse(xml_path).getroot()
    mask = np.zeros((number(root, "size/height"), number(root, "size/width")), dtype=bool)
    for box in root.iter("bndbox"):
        x0, y0, x1, y1 = (number(box, k) for k in ("xmin", "ymin", "xmax", "ymax"))
        mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True  # ILSVRC boxes are inclusive
    return mask


def dataset_classes(data: str | Path) -> list[str]:
    """The class names of a scenes folder or an ImageFolder tree, in label order."""
    manifest = Path(data) / "boxes.json"
    if manifest.exists():
        return list(json.loads(manifest.read_text())["classes"])
    from vitflow.data.folders import list_labelled_images

    return list_labelled_images(data).class_names


def read_items(data: str | Path, objects: str = "all", boxes: str | Path | None = None) -> list[Item]:
    """Items to explain: one per object (its class and mask) for a scenes folder, one per image
    (its folder's class) for an ImageFolder tree, with masks from ``boxes/<image stem>.xml``
    (ILSVRC box annotations) when given."""
    data = Path(data)
    manifest = data / "boxes.json"
    if manifest.exists():
        scenes = json.loads(manifest.read_text())
        classes = scenes["classes"]
        items = []
        for entry in scenes["scenes"]:
            chosen = entry["objects"] if objects == "all" else entry["objects"][:1]
            for k, obj in enumerate(chosen):
                mask = data / obj["mask"]
                items.append(
                    Item(data / entry["image"], classes.index(obj["class"]), mask, f"{entry['id']}:{k}")
                )
        return items
    from vitflow.data.folders import list_labelled_images

    images = list_labelled_images(data)
    items = []
    for path, label in zip(images.paths, images.labels, strict=True):
        mask = None
        if boxes is not None:
            xml = Path(boxes) / f"{path.stem}.xml"
            if not xml.exists():
                raise ValueError(f"{xml}: no box annotation for {path.name}")
            mask = xml
        items.append(Item(path, label, mask, path.stem))
    return items


def mask_at(mask: np.ndarray, preprocess) -> torch.Tensor:
    """A mask through the same geometry as its image (resize, crop): the preprocessing applied to
    the mask drawn as a black-and-white image, then thresholded at half."""
    picture = Image.fromarray(np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2))
    return torch.from_numpy(preprocess.to_image(preprocess(picture))[..., 0] > 127)
