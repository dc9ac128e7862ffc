"""Explaining many image files: the library function behind ``vitflow explain`` and ``vitflow demo``.

Files (and folders, walked for images) are decoded in ``DataLoader`` workers, explained in batches,
and each image's bundle is written atomically into its own folder by a pool of writer threads
while the next batch runs through the model. An image that cannot be read or written is reported
in one line and the run goes on. The batches are grouped in chunks: a finished chunk's files are
synced to the disk together (``sync_all``; not one ``fsync`` per image) and the chunk is then
recorded in ``OUT/.vitflow/``, so a rerun resumes, and under ``torchrun`` each rank takes its share of the
chunks (``vitflow.runs.distributed``). The raw maps of each chunk are kept as a safetensors shard
(``OUT/maps/``, read back with ``vitflow.load_maps``; ``save_maps=None`` leaves them out).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitflow.adapters import Adapter
from vitflow.atomic import CAN_SYNC_ALL, sync_all, write_bytes_atomic, write_json_atomic
from vitflow.core.daam import Rho
from vitflow.data.images import MAX_PIXELS, collect_images
from vitflow.data.loader import ImageFiles, batches, default_writers
from vitflow.data.preprocess import Preprocessing
from vitflow.explainer.daam import DAAM
from vitflow.outputs.bundle import RenderOptions, write_bundle
from vitflow.outputs.maps import ShardBuffer, save_shard
from vitflow.render.placement import CropBoxes, ShownCopies
from vitflow.runs.distributed import SINGLE, ChunkedRun, Group, Ledger, describer, run_chunks
from vitflow.runs.progress import Progress

MAP_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class ExplainReport:
    """``total``: images found; ``explained``: images explained (this run and, resumed, earlier
    ones); ``failures``: one line per image that could not be explained (all ranks);
    ``manifests``: the manifests this process wrote, in input order (unless told not to keep
    them, as the command line does, so memory stays flat in the number of images); ``resumed``:
    images found done by an earlier run; ``timings``: this process's seconds waiting for decoded batches
    (``read``), in the model (``model``) and waiting for the writers (``write``)."""

    manifests: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    total: int = 0
    explained: int = 0
    resumed: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "model": 0.0, "write": 0.0})

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        earlier = f"; {self.resumed} done by an earlier run" if self.resumed else ""
        if self.failures:
            return f"{len(self.failures)} of {self.total} images failed ({self.explained} explained{earlier})"
        return f"explained {self.explained} of {self.total} images{earlier}"


def image_jobs(inputs: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(image file, output folder)`` for every input, one rule for files and folders: an image
    is explained into ``OUT/<its path inside the folder given, without suffix>``, so ``photo.jpg``
    and ``photos/`` holding ``photo.jpg`` both give ``OUT/photo/`` (a subfolder's image
    ``OUT/sub/photo/``). Names that would repeat get ``_2``, ``_3``, ... so no image's output
    overwrites another's."""
    out = Path(out)
    jobs, used = [], set()
    for entry in inputs:
        entry = Path(entry)
        for path in collect_images([entry]):
            if entry.is_dir():
                name = path.relative_to(entry).with_suffix("")
            else:
                name = Path(path.stem or "image")
            candidate, n = name, 1
            while candidate.as_posix().lower() in used:  # case-insensitive file systems too
                n += 1
                candidate = name.with_name(f"{name.name}_{n}")
            used.add(candidate.as_posix().lower())
            jobs.append((path, out / candidate))
    return jobs


class _Writers:
    """Bundle writing in ``threads`` threads (PNG and GIF encoding release the GIL), at most
    ``bound`` bundles in flight; results come back in submission order, in the caller's thread."""

    def __init__(self, threads: int, bound: int) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="vitflow-writer") if threads else None
        self.bound = max(1, bound)
        self.pending: deque[tuple[Future, Callable[[object], None]]] = deque()

    def submit(self, handle: Callable[[object], None], work: Callable[[], object]) -> None:
        future: Future = Future()
        if self.pool is None:
            try:
                future.set_result(work())
            except Exception as error:
                future.set_exception(error)
        else:
            future = self.pool.submit(work)
        self.pending.append((future, handle))
        self.collect(wait=len(self.pending) > self.bound)

    def collect(self, wait: bool = False, everything: bool = False) -> None:
        """Hand finished results to their handlers, in order; wait for the oldest while over the
        bound (``wait``) or for all (``everything``)."""
        while self.pending and (everything or wait or self.pending[0][0].done()):
            future, handle = self.pending.popleft()
            try:
                handle(future.result())
            except Exception as error:
                handle(error)
            wait = len(self.pending) > self.bound

    def close(self) -> None:
        self.collect(everything=True)
        if self.pool is not None:
            self.pool.shutdown()


def _job_key(job: tuple[Path, Path]) -> str:
    """An image file as a chunk key sees it: path, output folder, size, modification time (an
    edited file is explained again)."""
    path, folder = job
    try:
        stat = path.stat()
        return f"{path}\t{folder}\t{stat.st_size}\t{stat.st_mtime_ns}"
    except OSError:
        return f"{path}\t{folder}\tmissing"


def _target_key(target: object) -> object:
    if target is None or isinstance(target, int):
        return target
    if isinstance(target, Sequence) and not isinstance(target, str | bytes):
        return [int(t) for t in target]
    return type(target).__name__


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
    chunk_images: int = 512,
    workers: int = 0,
    writers: int | None = None,
    save_maps: str | None = "float16",
    images: bool = True,
    device: torch.device | str = "cpu",
    adapter: Adapter | type[Adapter] | None = None,
    rho: Rho | None = None,
    normalize_blocks: bool = False,
    max_pixels: int | None = MAX_PIXELS,
    group: Group = SINGLE,
    on_error: Callable[[str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_done: Callable[[Path, dict], None] | None = None,
    progress: bool = False,
    keep_manifests: bool = True,
) -> ExplainReport:
    """Explain image files (folders are walked) with DAAM and write one bundle per image.

    Args:
        model: the ViT (moved to ``device``); preprocessing: its PIL -> tensor transform.
        inputs: image files and folders.
        out: output folder; see ``image_jobs`` for the per-image folder names.
        target: ``None`` (each image's predicted class), an int for all, a sequence with one class
            per input image (in the order of ``image_jobs``), or a target object
            (e.g. ``KNNTarget``).
        names: class names for the manifests.
        metadata: extra manifest fields for every image (model name, checkpoint, ...).
        batch_size: images per forward pass; chunk_images: images per resumable chunk (rounded
            up to whole batches). Results do not depend on ``workers``, ``writers`` or the
            number of ranks: the batches are fixed by these two numbers.
        workers: ``DataLoader`` processes decoding images (0: in this process).
        writers: threads encoding the bundles while the model runs (0: in this thread; default
            ``default_writers(device)``: none on a CPU of up to 5 cores).
        save_maps: ``"float16"`` (default) or ``"float32"``: the precision of the raw maps, logits and targets
            of each chunk to ``OUT/maps/chunk_NNNNNN.safetensors`` (``vitflow.load_maps``).
        images: write the picture bundles (``False``: maps only).
        group: this process's rank (``vitflow.runs.distributed.init``); each rank explains its
            share of the chunks and rank 0 writes ``OUT/index.html``.
        on_error / on_note / on_done: called with each failure line, each note line about an
            input (EXIF rotation, transparency, first frame of an animation), and each finished
            ``(folder, manifest)``.
        keep_manifests: collect every manifest in the report (``False`` for runs of any size:
            ``on_done`` sees each one as it is written).

    Returns:
        an ``ExplainReport``; nothing raises for a bad image.
    """
    options = options or RenderOptions()
    if save_maps is not None and save_maps not in MAP_DTYPES:
        raise ValueError(f"save_maps must be one of {', '.join(MAP_DTYPES)}, got {save_maps!r}")
    if not images and save_maps is None:
        raise ValueError("nothing to write: without images, save the maps (--save-maps)")
    out = Path(out)
    jobs = image_jobs(inputs, out)
    report = ExplainReport(total=len(jobs))
    per_image = isinstance(target, Sequence) and not isinstance(target, str | bytes)
    targets: Sequence = target if isinstance(target, Sequence) and per_image else ()
    if per_image and len(targets) != len(jobs):
        raise ValueError(
            f"got {len(targets)} targets for {len(jobs)} images; give one per image or one for all"
        )
    if not jobs:
        return report

    state = {
        "target": _target_key(target), "rho": rho, "normalize_blocks": normalize_blocks,
        "metadata": json.loads(json.dumps(metadata or {}, default=str)), "render": asdict(options),
        "save_maps": save_maps, "images": images, "max_pixels": max_pixels,
    }  # fmt: skip
    fresh = not out.exists()  # a run refused before it finishes a chunk leaves no folder it made
    run = ChunkedRun.open(
        len(jobs), batch_size, chunk_images, out / ".vitflow", state, lambda i: _job_key(jobs[i]), group,
        strict=False, what="explain", suffix=".json",
        outputs=(lambda c: out / "maps" / f"chunk_{c:06d}.safetensors") if save_maps else None,
    )  # fmt: skip
    plan, ledger, todo = run.plan, run.ledger, run.todo
    for note in ledger.notes:
        if on_note is not None:
            on_note(note)
    device = torch.device(device)
    model = model.to(device)
    # the photo at its display size for the pictures, made where the file is decoded
    shown = ShownCopies(options.display_size) if images and options.on == "original" else None
    loader = batches(
        ImageFiles([path for path, _ in jobs], preprocessing, max_pixels, extra=shown),
        run.my_batches(),
        workers=workers,
        pin_memory=device.type == "cuda",
    )
    bar = Progress(len(jobs), "explain", enabled=progress and group.is_main and len(jobs) > 1)
    bar.skip(run.items_done())
    timings = report.timings

    def tell(callback: Callable | None, *args) -> None:
        if callback is not None:
            bar.clear()
            callback(*args)

    def explain_chunk(chunk: int, daam: DAAM, pool: _Writers) -> int:
        explained: list[dict] = []
        failures: list[str] = []
        shard = ShardBuffer(sum(len(b) for b in plan[chunk]), MAP_DTYPES[save_maps or "float32"])

        def fail(message: str) -> None:
            failures.append(message)
            tell(on_error, message)

        for _ in plan[chunk]:
            started = time.perf_counter()
            batch = next(loader)
            timings["read"] += time.perf_counter() - started
            for _, message in batch.errors:
                fail(message)
            bar.update(len(batch.errors))
            if batch.x is None:
                continue
            started = time.perf_counter()
            x = batch.x.to(device, non_blocking=True)
            explained_target = [targets[i] for i in batch.indices] if per_image else target
            result = daam(x, target=explained_target).to("cpu")
            timings["model"] += time.perf_counter() - started
            if save_maps:
                ids = [jobs[i][1].relative_to(out).as_posix() for i in batch.indices]
                shard.add(result, ids, [str(jobs[i][0]) for i in batch.indices])
            fields = {
                **(metadata or {}),
                "input_size": list(x.shape[-2:]),
                "preprocessing": preprocessing.config,
                "rho": rho or daam_rho(explained_target),
                "normalize_blocks": normalize_blocks,
            }
            for k, index in enumerate(batch.indices):
                path, folder = jobs[index]
                for note in batch.notes[k]:
                    tell(on_note, f"{path}: {note}")
                entry = {"folder": folder.relative_to(out).as_posix(), "image": str(path)}
                if not images:
                    explained.append(entry)
                    bar.update(1)
                    continue
                fields_k = {**fields, "image": str(path), "input_notes": batch.notes[k]}

                original = batch.extras[k]  # the photo at its display size, from the decoding worker
                box = None if original is None else placements.box(*original.original_size)

                def write(folder=folder, pixels=batch.x[k], one=result[k], fields_k=fields_k,
                          original=original, box=box):  # fmt: skip
                    crop = preprocessing.to_image(pixels)
                    return write_bundle(folder, crop, one, fields_k, names, options, original, box,
                                        durable=not CAN_SYNC_ALL)  # fmt: skip

                def handle(outcome, path=path, folder=folder, entry=entry) -> None:
                    bar.update(1)
                    if isinstance(outcome, OSError | ValueError):
                        fail(f"{path}: could not write {folder} ({outcome})")
                        return
                    if isinstance(outcome, BaseException):
                        raise outcome
                    entry["target"] = outcome["target"].get("name", "")
                    explained.append(entry)
                    if keep_manifests:
                        report.manifests.append(outcome)
                    tell(on_done, folder, outcome)

                started = time.perf_counter()
                pool.submit(handle, write)  # writes here with no writer threads, or waits when over the bound
                timings["write"] += time.perf_counter() - started
        started = time.perf_counter()
        pool.collect(everything=True)  # the chunk is recorded only when all its files are
        timings["write"] += time.perf_counter() - started
        if len(shard):
            assert save_maps is not None  # only then are maps kept
            save_shard(
                out / "maps" / f"chunk_{chunk:06d}.safetensors", shard.result(), shard.ids, shard.images,
                {**json.loads(json.dumps(metadata or {}, default=str)), "rank": group.rank,
                 "world_size": group.world_size, "chunk": chunk, "rho": fields["rho"],
                 "normalize_blocks": normalize_blocks},
                MAP_DTYPES[save_maps],
            )  # fmt: skip
        sync_all(out)  # the chunk's bundles and shard on the disk before the record says it is done
        record = {"rank": group.rank, "world_size": group.world_size, "explained": explained}
        write_json_atomic(ledger.path(chunk, ".json"), {**record, "failures": failures})
        return sum(len(b) for b in plan[chunk])

    describe = describer(plan, "images", lambda i: str(jobs[i][0]))
    pool = _Writers(default_writers(device) if writers is None else writers, bound=2 * batch_size)
    placements = CropBoxes(preprocessing)
    try:
        with DAAM(model, rho=rho, normalize_blocks=normalize_blocks, adapter=adapter) as daam:
            loader = iter(loader)
            run_chunks(group, todo, lambda c: explain_chunk(c, daam, pool), describe, bar.update)
    except Exception:  # a class out of range, a target the model cannot take: not a signal
        if fresh and group.is_main and not any(ledger.path(c, ".json").exists() for c in range(len(plan))):
            pool.close()
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        pool.close()
        bar.close()
    return _merge(report, ledger, len(plan), set(todo), out, options.html and images, metadata, group)


def _merge(
    report: ExplainReport, ledger: Ledger, chunks: int, todo: set[int], out: Path, html: bool,
    metadata: dict | None, group: Group,
) -> ExplainReport:  # fmt: skip
    """Rank 0 reads every chunk's record: the run's failures and counts, and ``OUT/index.html``."""
    merged: dict = {}  # only rank 0's counts
    if group.is_main:
        ledger.prune(".json")
        for stale in sorted((out / "maps").glob("chunk_*.safetensors")):
            if int(stale.stem.split("_")[1]) >= chunks:  # from a longer earlier run into this folder
                stale.unlink()
        explained, failures, resumed = [], [], 0
        for chunk in range(chunks):
            record = json.loads(ledger.path(chunk, ".json").read_text())
            explained += record["explained"]
            failures += record["failures"]
            if chunk not in todo:
                resumed += len(record["explained"])
        if html and explained:
            _write_index(out, explained, str((metadata or {}).get("model", "")))
        merged = {"explained": len(explained), "failures": failures, "resumed": resumed}
    merged = group.first(merged)
    report.explained, report.resumed = merged["explained"], merged["resumed"]
    report.failures = merged["failures"]
    return report


def daam_rho(target: object) -> str:
    """The coefficient transform DAAM uses by default for ``target`` (its ``rho``, else ReLU)."""
    return getattr(target, "rho", "relu")


def _write_index(out: Path, explained: list[dict], label: str) -> None:
    from vitflow.render import index_html

    entries = [
        {
            "name": entry["folder"],
            "viewer": f"{entry['folder']}/viewer.html",
            "thumbnail": f"{entry['folder']}/final.jpg",  # the final map, not only the input
            "target": entry.get("target", ""),
        }
        for entry in explained
    ]
    write_bytes_atomic(out / "index.html", index_html(entries, f"vitflow: {label}").encode())
