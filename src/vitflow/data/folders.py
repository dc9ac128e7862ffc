"""Labelled image lists: an ImageFolder tree (one sub-folder per class) or a list file."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from vitflow.data.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class LabelledImages:
    paths: list[Path]
    labels: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def digest(self) -> str:
        """A fingerprint of the list (paths, labels, classes), to recognise the same data on resume."""
        h = hashlib.sha256()
        for name in self.class_names:
            h.update(name.encode() + b"\0")
        for path, label in zip(self.paths, self.labels, strict=True):
            h.update(f"{path}\t{label}\n".encode())
        return h.hexdigest()


def list_image_folder(root: str | os.PathLike) -> LabelledImages:
    """``root/<class>/**/<image>``: classes are the sorted sub-folder names (as torchvision's
    ImageFolder); images are files with an image suffix, sorted."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        paths += files
        labels += [label] * len(files)
    return LabelledImages(paths, labels, classes)


def read_list_file(path: str | os.PathLike) -> LabelledImages:
    """Lines ``IMAGE_PATH CLASS`` (whitespace-separated; the class is a name or an integer; relative
    paths are relative to the list file; ``#`` starts a comment)."""
    path = Path(path)
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'IMAGE_PATH CLASS', got {line!r}")
        image, label = parts
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        entries.append((image_path, label))
    if all(label.isdigit() for _, label in entries):
        classes = [str(c) for c in sorted({int(label) for _, label in entries})]
    else:
        classes = sorted({label for _, label in entries})
    index = {name: i for i, name in enumerate(classes)}
    return LabelledImages(
        [p for p, _ in entries], [index[str(int(lb)) if lb.isdigit() else lb] for _, lb in entries], classes
    )


def list_labelled_images(source: str | os.PathLike) -> LabelledImages:
    """An ImageFolder directory or a list file; raises ``ValueError`` when it holds no images."""
    source = Path(source)
    if not source.exists():
        raise ValueError(f"{source}: no such folder or list file")
    images = list_image_folder(source) if source.is_dir() else read_list_file(source)
    if not images.paths:
        raise ValueError(
            f"{source}: no images found; give a folder with one sub-folder of images per class, or a list "
            "file of 'IMAGE_PATH CLASS' lines"
        )
    return images
