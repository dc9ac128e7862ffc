"""Explaining many image files: the library function behind ``vitflow explain`` and ``vitflow demo``.

Files (and folders, walked for images) are read, preprocessed and explained in batches; each
image's bundle is written atomically into its own folder; an image that cannot be read or
written is reported in one line and the run goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitflow.adapters import Adapter
from vitflow.bundle import RenderOptions, write_bundle
from vitflow.data.images import MAX_PIXELS, ImageLoadError, collect_images, read_image
from vitflow.data.preprocess import Preprocessing
from vitflow.engine import DAAM
from vitflow.files import write_bytes_atomic
from vitflow.progress import Progress


@dataclass
class ExplainReport:
    """``manifests``: one per explained image, in input order; ``failures``: one line per image
    that could not be explained; ``total``: images found."""

    manifests: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    total: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if self.failures:
            return f"{len(self.failures)} of {self.total} images failed ({len(self.manifests)} explained)"
        return f"explained {len(self.manifests)} of {self.total} images"


def image_jobs(inputs: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(image file, output folder)`` for every input: a file gives ``OUT/<stem>``; a folder gives
    ``OUT/<folder name>/<path inside it without suffix>`` for each image in it. Names that would
    repeat get ``_2``, ``_3``, ... so no image's output overwrites another's."""
    out = Path(out)
    jobs, used = [], set()
    for entry in inputs:
        entry = Path(entry)
        for path in collect_images([entry]):
            if entry.is_dir():
                relative = path.relative_to(entry).with_suffix("")
                name = Path(entry.resolve().name or "images") / relative
            else:
                name = Path(path.stem or "image")
            candidate, n = name, 1
            while candidate.as_posix().lower() in used:  # case-insensitive file systems too
                n += 1
                candidate = name.with_name(f"{name.name}_{n}")
            used.add(candidate.as_posix().lower())
            jobs.append((path, out / candidate))
    return jobs


def explain_files(
    model: nn.Module,
    preprocessing: Preprocessing,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    target: object = None,
    names: list[str] | None = None,
    options: RenderOptions | None = None,
    metadata: dict | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    adapter: Adapter | type[Adapter] | None = None,
    rho: str | None = None,
    normalize_blocks: bool = False,
    max_pixels: int | None = MAX_PIXELS,
    on_error: Callable[[str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_done: Callable[[Path, dict], None] | None = None,
    progress: bool = False,
) -> ExplainReport:
    """Explain image files (folders are walked) with DAAM and write one bundle per image.

    Args:
        model: the ViT (moved to ``device``); preprocessing: its PIL -> tensor transform.
        inputs: image files and folders.
        out: output folder; see :func:`image_jobs` for the per-image folder names.
        target: ``None`` (each image's predicted class), an int for all, a sequence with one class
            per input image (in the order of :func:`image_jobs`), or a target object
            (e.g. :class:`~vitflow.targets.KNNTarget`).
        names: class names for the manifests.
        metadata: extra manifest fields for every image (model name, checkpoint, ...).
        on_error / on_note / on_done: called with each failure line, each note line about an
            input (EXIF rotation, transparency, first frame of an animation), and each finished
            ``(folder, manifest)``.

    Returns:
        an :class:`ExplainReport`; nothing raises for a bad image.
    """
    options = options or RenderOptions()
    jobs = image_jobs(inputs, out)
    report = ExplainReport(total=len(jobs))
    per_image = isinstance(target, Sequence) and not isinstance(target, str | bytes)
    if per_image and len(target) != len(jobs):
        raise ValueError(
            f"got {len(target)} targets for {len(jobs)} images; give one per image or one for all"
        )

    bar = Progress(len(jobs), "explain", enabled=progress and len(jobs) > 1)

    def tell(callback: Callable | None, *args) -> None:
        if callback is not None:
            bar.clear()
            callback(*args)

    def fail(message: str) -> None:
        report.failures.append(message)
        tell(on_error, message)

    device = torch.device(device)
    model = model.to(device)
    written: list[tuple[Path, dict]] = []
    with DAAM(model, rho=rho, normalize_blocks=normalize_blocks, adapter=adapter) as daam:
        for start in range(0, len(jobs), batch_size):
            batch = []  # (index, path, folder, tensor, notes)
            for index in range(start, min(start + batch_size, len(jobs))):
                path, folder = jobs[index]
                try:
                    loaded = read_image(path, max_pixels)
                    batch.append((index, path, folder, preprocessing(loaded.image), loaded.notes))
                except ImageLoadError as error:
                    fail(str(error))
                    bar.update(1)
            if not batch:
                continue
            x = torch.stack([tensor for _, _, _, tensor, _ in batch]).to(device)
            explained = [target[i] for i, *_ in batch] if per_image else target
            result = daam(x, target=explained)
            for i, (_, path, folder, _, notes) in enumerate(batch):
                for note in notes:
                    tell(on_note, f"{path}: {note}")
                fields = {
                    **(metadata or {}),
                    "image": str(path),
                    "input_size": list(x.shape[-2:]),
                    "input_notes": notes,
                    "preprocessing": preprocessing.config,
                    "rho": rho or daam_rho(explained),
                    "normalize_blocks": normalize_blocks,
                }
                try:
                    manifest = write_bundle(
                        folder, preprocessing.to_image(x[i]), result[i], fields, names, options
                    )
                except (OSError, ValueError) as error:
                    fail(f"{path}: could not write {folder} ({error})")
                    continue
                finally:
                    bar.update(1)
                report.manifests.append(manifest)
                written.append((folder, manifest))
                tell(on_done, folder, manifest)
    bar.close()
    if options.html and written:
        _write_index(Path(out), written, str((metadata or {}).get("model", "")))
    return report


def daam_rho(target: object) -> str:
    """The coefficient transform DAAM uses by default for ``target`` (its ``rho``, else ReLU)."""
    return getattr(target, "rho", "relu")


def _write_index(out: Path, written: list[tuple[Path, dict]], label: str) -> None:
    from vitflow.render import index_html

    entries = [
        {
            "name": folder.relative_to(out).as_posix(),
            "viewer": f"{folder.relative_to(out).as_posix()}/viewer.html",
            "thumbnail": f"{folder.relative_to(out).as_posix()}/input.png",
            "target": manifest["target"].get("name", ""),
        }
        for folder, manifest in written
    ]
    write_bytes_atomic(out / "index.html", index_html(entries, f"vitflow: {label}").encode())
