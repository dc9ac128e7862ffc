"""End-to-end ``vitflow explain`` throughput against the model alone, side by side in one run.

Rows:
- model only: DAAM on batches already decoded and preprocessed, in memory (what the model can do);
- default explain: :func:`vitflow.runs.explain.explain_files` on the same files with its default
  outputs (final.jpg, viewer.html, manifest.json per image, index.html; the maps in shards),
  DataLoader workers and writer threads as the command line sets them;
- with the GIF too (``--gif``), maps only (``images=False``, ``--no-images``) and every picture
  (``--blocks --gif``: flow.gif, input.png and every block's overlay too);
- the main thread alone (workers 0, writers 0), with its split: decode / model / encode;
- bytes and files written per image;
- the encoder alone: the default bundles of precomputed results written by 1, 2 and all cores'
  worth of threads, and of processes (``concurrent.futures``), images per second.

The main table comes last. The machines are noisy (the same row varies by a third between runs):
``--rounds`` interleaves every row with its own model-only pass and reports the medians of the
rounds' ratios and rates.

Imports and model loading are not counted (the same for every row, ~3 s for the CLI).

    python benchmarks/pipeline.py                                   # demo ViT, 64 scenes of 224 px
    python benchmarks/pipeline.py --model deit_small_patch16_224 --photos --images 32
    python benchmarks/pipeline.py --model deit_small_patch16_224 --photos --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from vitflow import DAAM
from vitflow.data.images import load_image
from vitflow.data.loader import default_workers, default_writers
from vitflow.data.scenes import write_scenes
from vitflow.outputs.bundle import RenderOptions, write_bundle
from vitflow.render.placement import CropBoxes, Shown
from vitflow.runs.explain import explain_files


def load(name: str | None, device: str):
    if name is None:
        from vitflow.models.demo import load_demo_model

        model, preprocessing = load_demo_model()
    else:
        import timm

        from vitflow.data.preprocess import Preprocessing

        model = timm.create_model(name, pretrained=False).eval()
        preprocessing = Preprocessing.for_timm(model)
    return model.to(device), preprocessing


def photos(folder: Path, count: int) -> None:
    """``count`` JPEG photos of 640-1600 px from scikit-image's and scikit-learn's sample photos,
    resized (bicubic) to a long side spread over that range, each at its own aspect ratio."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), *load_sample_images().images]
    folder.mkdir(parents=True)
    for i in range(count):
        source = Image.fromarray(sources[i % len(sources)])
        side = 640 + (960 * i) // max(1, count - 1)
        factor = side / max(source.size)
        size = (round(source.width * factor), round(source.height * factor))
        source.resize(size, Image.Resampling.BICUBIC).save(folder / f"photo_{i:03d}.jpg", quality=92)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_only(model, preprocessing, files: list[Path], batch: int, device: str, passes: int = 1) -> float:
    """Seconds for DAAM over every batch, inputs already on the device (best of ``passes``)."""
    tensors = torch.stack([preprocessing(load_image(f)) for f in files]).to(device)
    best = float("inf")
    with DAAM(model) as daam:
        daam(tensors[:batch])  # warm-up
        for _ in range(passes):
            sync(device)
            start = time.perf_counter()
            for s in range(0, len(files), batch):
                daam(tensors[s : s + batch]).maps.cpu()  # the pipeline moves results to the CPU too
            sync(device)
            best = min(best, time.perf_counter() - start)
    return best


def end_to_end(model, preprocessing, folder: Path, batch: int, device: str, threads: int | None = None,
               **kwargs):  # fmt: skip
    """Seconds, report, bytes and files written for one explain run (the output is removed), with
    ``threads`` torch threads if given (the model-only passes keep the default)."""
    out = Path(tempfile.mkdtemp(prefix="vitflow-pipeline-"))
    default_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        sync(device)
        start = time.perf_counter()
        report = explain_files(model, preprocessing, [folder], out, batch_size=batch, device=device, **kwargs)
        sync(device)
        seconds = time.perf_counter() - start
        written = [p for p in out.rglob("*") if p.is_file() and ".vitflow" not in p.parts]
        return seconds, report, sum(p.stat().st_size for p in written), len(written)
    finally:
        torch.set_num_threads(default_threads)
        shutil.rmtree(out, ignore_errors=True)


def _bundle(job: tuple) -> None:
    write_bundle(*job)


def encoder_alone(model, preprocessing, files: list[Path], cores: int) -> list[tuple[str, int, float]]:
    """``(engine, workers, images/s)`` for writing the default bundles of precomputed results, and
    ``(outputs, 1, images/s)`` for other outputs on one thread (what each picture costs)."""
    boxes = CropBoxes(preprocessing)
    jobs, out = [], Path(tempfile.mkdtemp(prefix="vitflow-encoder-"))
    with DAAM(model) as daam:
        for i, path in enumerate(files):
            image = load_image(path)
            x = preprocessing(image)
            result = daam(x[None]).to("cpu")
            shown = Shown.of(image)
            jobs.append((out / f"{i:04d}", preprocessing.to_image(x), result, {"model": "bench"}, None,
                         RenderOptions(), shown, boxes.box(image.height, image.width)))  # fmt: skip
    rows = []
    try:
        # processes start from a fork server: forking a process whose torch threads are running is
        # unsafe (OpenMP), and the command line would have to do the same
        context = multiprocessing.get_context("forkserver")
        for engine in ("threads", "processes"):
            for workers in sorted({1, 2, cores}):
                pool: Executor = ThreadPoolExecutor(workers)
                if engine == "processes":
                    pool = ProcessPoolExecutor(workers, context)
                with pool:
                    list(pool.map(_bundle, jobs[: 2 * workers]))  # start the workers, warm caches
                    start = time.perf_counter()
                    list(pool.map(_bundle, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
                    rows.append((engine, workers, len(jobs) / (time.perf_counter() - start)))
        for label, options in (("--no-viewer (final.jpg, manifest)", RenderOptions(html=False)),
                               ("--blend paper (not faded)", RenderOptions(blend="paper")),
                               ("--gif", RenderOptions(gif=True)), ("--blocks", RenderOptions(blocks=True))):
            start = time.perf_counter()
            for job in jobs:
                write_bundle(*job[:5], options, *job[6:])
            rows.append((f"threads, {label}", 1, len(jobs) / (time.perf_counter() - start)))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return rows


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model", help="a timm name (random weights); default: the bundled demo ViT")
    parser.add_argument("--photos", action="store_true", help="JPEG photos of 640-1600 px instead of scenes")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224, help="scene size in pixels (default 224)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--workers", type=int, help="DataLoader workers (default: the command line's for the device)"
    )
    parser.add_argument(
        "--writers", type=int, help="writer threads (default: the command line's for the device)"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 below 32 images)")
    parser.add_argument(
        "--model-threads", type=int,
        help="also a default explain row with this many torch threads (cores - 1: a core for the writers)",
    )  # fmt: skip
    args = parser.parse_args()

    torch.manual_seed(0)
    args.workers = default_workers(args.device) if args.workers is None else args.workers
    args.writers = default_writers(args.device) if args.writers is None else args.writers
    args.rounds = args.rounds or (3 if args.images >= 32 else 1)
    model, preprocessing = load(args.model, args.device)
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        if args.photos:
            folder = Path(tmp) / "photos"
            photos(folder, args.images)
        else:
            write_scenes(Path(tmp) / "scenes", args.images, seed=5, size=args.size)
            folder = Path(tmp) / "scenes" / "images"
        files = sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
        run = dict(model=model, preprocessing=preprocessing, folder=folder, batch=args.batch,
                   device=args.device)  # fmt: skip
        pooled = dict(workers=args.workers, writers=args.writers)
        end_to_end(**run, **pooled)  # warm caches
        rows = {  # the rows the targets are about last (the before-stop hook shows the last four)
            "every picture (--blocks --gif)": dict(pooled, options=RenderOptions(blocks=True, gif=True)),
            "default, main thread only (workers 0, writers 0)": dict(workers=0, writers=0),
            "default and flow.gif (--gif)": dict(pooled, options=RenderOptions(gif=True)),
            "maps only (--no-images)": dict(pooled, images=False),
            "default explain": dict(pooled),
        }
        if args.model_threads:
            label = f"default, {args.model_threads} torch thread(s) for the model"
            rows = {label: dict(pooled, threads=args.model_threads), **rows}
        model_seconds: list[float] = []
        measured: dict[str, list] = {label: [] for label in rows}
        for _ in range(args.rounds):
            for label, options in rows.items():  # each row beside its own model-only pass
                model_seconds.append(model_only(model, preprocessing, files, args.batch, args.device))
                measured[label].append((model_seconds[-1], *end_to_end(**run, **options)))
        serial = measured["default, main thread only (workers 0, writers 0)"][-1][1:]
        encoder = encoder_alone(model, preprocessing, files[: min(len(files), 32)], cores)
    n = len(files)
    what = "photos of 640-1600 px" if args.photos else f"scenes of {args.size} px"
    name = args.model or "vitflow demo ViT"
    print(f"{name}, {n} {what}, batch {args.batch}, {args.device}, {cores} CPU cores, "
          f"torch threads {torch.get_num_threads()}, DataLoader workers {args.workers}, "
          f"writer threads {args.writers}\n")  # fmt: skip
    print("| the encoder alone (bundles of precomputed results; default unless named) | workers | images/s |")
    print("|---|---:|---:|")
    for engine, workers, rate in encoder:
        print(f"| {engine} | {workers} | {rate:.1f} |")
    print()
    seconds, report = serial[0], serial[1]
    t = report.timings
    print(f"split of the main-thread run ({seconds:.2f} s): decode + preprocess {t['read']:.2f} s, "
          f"model {t['model']:.2f} s, encode + write {t['write']:.2f} s, other "
          f"{seconds - sum(t.values()):.2f} s")  # fmt: skip
    print()
    print(f"medians of {args.rounds} interleaved rounds (the ratio: each round's row against the model-only "
          "pass just before it)\n")  # fmt: skip
    print("| run | images/s | × model only | bytes per image | files per image |")
    print("|---|---:|---:|---:|---:|")
    alone = n / statistics.median(model_seconds)
    print(f"| model only (DAAM on preprocessed batches in memory) | {alone:.1f} | 1.00 | | |")
    for label, results in measured.items():
        rate = statistics.median(n / seconds for _, seconds, _, _, _ in results)
        ratio = statistics.median(alone / seconds for alone, seconds, _, _, _ in results)
        size, count = results[-1][3], results[-1][4]
        print(f"| {label} | {rate:.1f} | {ratio:.2f} | {size / n / 1e3:,.0f} KB | {count / n:.2f} |")


if __name__ == "__main__":
    main()
