"""End-to-end ``vitflow explain`` throughput against the model alone, in one run.

Model only: DAAM on batches already decoded and preprocessed, in memory (what the model can do).
End to end: :func:`vitflow.runs.explain.explain_files` on the same images written as PNG files, same
model and batch: decode + preprocess, DAAM, and the default outputs (input.png, one overlay per
block, flow.gif, manifest.json), written atomically. Variants: everything in the main thread
(``workers=0, writers=0``, which also gives the split: decode / model / encode), and with
DataLoader workers and writer threads. Imports and model loading are not counted (they are the
same for every variant, ~3 s for the CLI).

    python benchmarks/pipeline.py                       # demo ViT, 64 scenes of 224 px, batch 8
    python benchmarks/pipeline.py --model deit_small_patch16_224 --device cuda --images 256 --batch 32
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from vitflow import DAAM
from vitflow.data.images import load_image
from vitflow.data.loader import default_workers, default_writers
from vitflow.data.scenes import write_scenes
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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_only(model, preprocessing, files: list[Path], batch: int, device: str) -> float:
    """Seconds for DAAM over every batch, inputs already on the device (best of 2 passes)."""
    tensors = torch.stack([preprocessing(load_image(f)) for f in files]).to(device)
    best = float("inf")
    with DAAM(model) as daam:
        daam(tensors[:batch])  # warm-up
        for _ in range(2):
            sync(device)
            start = time.perf_counter()
            for s in range(0, len(files), batch):
                daam(tensors[s : s + batch]).maps.cpu()  # the pipeline moves results to the CPU too
            sync(device)
            best = min(best, time.perf_counter() - start)
    return best


def end_to_end(model, preprocessing, folder: Path, batch: int, device: str, workers: int, writers: int):
    out = Path(tempfile.mkdtemp(prefix="vitflow-pipeline-"))
    try:
        sync(device)
        start = time.perf_counter()
        report = explain_files(model, preprocessing, [folder], out, batch_size=batch, device=device,
                               workers=workers, writers=writers)  # fmt: skip
        sync(device)
        return time.perf_counter() - start, report
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a timm name (random weights); default: the bundled demo ViT")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224, help="scene size in pixels (default 224)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--writers", type=int, default=default_writers())
    args = parser.parse_args()

    torch.manual_seed(0)
    model, preprocessing = load(args.model, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        write_scenes(Path(tmp) / "scenes", args.images, seed=5, size=args.size)
        folder = Path(tmp) / "scenes" / "images"
        files = sorted(folder.rglob("*.png"))
        end_to_end(model, preprocessing, folder, args.batch, args.device, 0, 0)  # warm caches
        seconds_model = model_only(model, preprocessing, files, args.batch, args.device)
        serial, serial_report = end_to_end(model, preprocessing, folder, args.batch, args.device, 0, 0)
        pooled, pooled_report = end_to_end(
            model, preprocessing, folder, args.batch, args.device, args.workers, args.writers
        )
    n = len(files)
    name = args.model or "vitflow demo ViT"
    cores = len(__import__("os").sched_getaffinity(0))
    print(f"{name}, {n} images of {args.size} px, batch {args.batch}, {args.device}, {cores} CPU cores, "
          f"torch threads {torch.get_num_threads()}\n")  # fmt: skip
    print("| run | images/s | × model only |")
    print("|---|---:|---:|")
    print(f"| model only (DAAM on preprocessed batches in memory) | {n / seconds_model:.1f} | 1.00 |")
    print(f"| end to end, main thread only (workers 0, writers 0) | {n / serial:.1f} | "
          f"{seconds_model / serial:.2f} |")  # fmt: skip
    print(f"| end to end, workers {args.workers}, writers {args.writers} | {n / pooled:.1f} | "
          f"{seconds_model / pooled:.2f} |")  # fmt: skip
    t = serial_report.timings
    other = serial - sum(t.values())
    print(f"\nsplit of the main-thread run ({serial:.2f} s): decode + preprocess {t['read']:.2f} s, "
          f"model {t['model']:.2f} s, encode + write {t['write']:.2f} s, other {other:.2f} s")  # fmt: skip
    t = pooled_report.timings
    print(
        f"with workers and writers ({pooled:.2f} s), main thread: waiting for decoded batches "
        f"{t['read']:.2f} s, in the model {t['model']:.2f} s, waiting for the writers {t['write']:.2f} s"
    )


if __name__ == "__main__":
    main()
