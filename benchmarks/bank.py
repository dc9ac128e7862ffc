"""Memory-bank throughput: building (images/s) and k-NN weights at ImageNet scale (queries/s).

    python benchmarks/bank.py                      # 1.28M x 768 float16 bank, batch 8 queries
    python benchmarks/bank.py --entries 200000     # smaller
    python benchmarks/bank.py --device cuda        # build and query on a GPU (the bank is copied there once)

Merge: the bank written as 4096-row chunk files (what ``bank build`` leaves in ``OUT.parts/``), then
streamed into one bank file, with the peak resident-memory growth of the merge and of loading it.

Build: the demo ViT's backbone on procedural scenes written to a temporary folder (files read,
decoded and preprocessed as a user's dataset would be). Query: a random unit-norm bank of
``entries x dim`` in float16; the k-NN weights (top-20 search in chunks, votes, ``w``) for a batch
of queries, timed over repeats, with the peak resident-memory growth during the queries and the
bank's own size for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import PeakMemory  # noqa: E402

from vitflow.cli import main as cli  # noqa: E402
from vitflow.data.folders import list_image_folder  # noqa: E402
from vitflow.models.demo import load_demo_model  # noqa: E402
from vitflow.runs.bank_build import build_bank  # noqa: E402
from vitflow.targets import KNNTarget, MemoryBank  # noqa: E402


def random_bank(entries: int, dim: int, classes: int = 1000) -> MemoryBank:
    gen = torch.Generator().manual_seed(0)
    features = torch.empty(entries, dim, dtype=torch.float16)
    for start in range(0, entries, 65536):  # build in pieces: never a float32 copy of the whole bank
        block = torch.randn(min(65536, entries - start), dim, generator=gen)
        features[start : start + len(block)] = F.normalize(block, dim=1).half()
    labels = torch.arange(entries) % classes
    return MemoryBank(features, labels, [f"class {i}" for i in range(classes)], {"model": "random"})


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_build(images: int, batch: int, device: str) -> float:
    model, preprocessing = load_demo_model()
    model.reset_classifier(0)
    model.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        cli(["scenes", "--out", f"{tmp}/scenes", "--n", str(images), "--seed", "5"])
        listed = list_image_folder(f"{tmp}/scenes/images")
        start = time.perf_counter()
        build_bank(
            model, preprocessing, listed, f"{tmp}/b.bank", batch_size=batch, progress=False, device=device
        )
        return images / (time.perf_counter() - start)


def bench_query(bank: MemoryBank, batch: int, repeats: int, chunk: int, device: str) -> tuple[float, int]:
    """Median seconds per batch and the peak memory growth during the queries (GPU memory on a GPU,
    resident memory on the CPU), the bank itself not counted."""
    target = KNNTarget(bank, k=20, temperature=0.07, chunk_size=chunk)
    queries = torch.randn(batch, bank.dim, device=device)
    target(queries)  # warm-up (on a GPU this copies the bank there)
    sync(device)
    times = []
    with PeakMemory(device) as peak:
        for _ in range(repeats):
            start = time.perf_counter()
            target(queries)
            sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times), peak.bytes


def bench_merge(bank: MemoryBank, chunk_rows: int) -> tuple[float, int, int]:
    """Seconds and peak resident-memory growth of the streaming merge of ``bank`` written as
    chunk files of ``chunk_rows`` (as ``bank build`` leaves them), and of loading the result."""
    from safetensors.torch import save_file

    from vitflow.data.folders import LabelledImages
    from vitflow.runs.bank_build import _merge_chunks

    with tempfile.TemporaryDirectory() as tmp:
        chunks = []
        for k, start in enumerate(range(0, len(bank), chunk_rows)):
            rows = slice(start, min(start + chunk_rows, len(bank)))
            chunks.append(Path(tmp) / f"chunk_{k:06d}.safetensors")
            index = torch.arange(rows.start, rows.stop, dtype=torch.int64)
            save_file({"features": bank.features[rows].contiguous(), "index": index}, str(chunks[-1]))
        images = LabelledImages([Path(f"{i}.jpg") for i in range(len(bank))], bank.labels.tolist(),
                                bank.class_names)  # fmt: skip

        def measured(work):
            with PeakMemory("cpu") as peak:
                start = time.perf_counter()
                result = work()
                seconds = time.perf_counter() - start
            return result, seconds, peak.bytes

        out = Path(tmp) / "merged.bank"
        _, seconds, peak = measured(lambda: _merge_chunks(chunks, images, out, {"model": "random"}, {}))
        loaded, _, load_peak = measured(lambda: MemoryBank.load(out))
        assert torch.equal(loaded.features, bank.features)
    return seconds, peak, load_peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_281_167)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--build-images", type=int, default=512)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{where}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    rate = bench_build(args.build_images, batch=64, device=args.device)
    print(f"build: demo ViT backbone (96 px), {args.build_images} scene files: {rate:.1f} images/s")
    bank = random_bank(args.entries, args.dim)
    size = bank.features.numel() * bank.features.element_size()
    seconds, peak = bench_query(bank, args.batch, args.repeats, args.chunk, args.device)
    print(f"query: bank {args.entries} x {args.dim} float16 ({size / 2**30:.2f} GiB), batch {args.batch}, "
          f"chunk {args.chunk}: {seconds:.3f} s per batch = {args.batch / seconds:.1f} queries/s; "
          f"peak memory during queries +{peak / 2**20:.0f} MiB")  # fmt: skip
    seconds, peak, load_peak = bench_merge(bank, chunk_rows=4096)
    print(f"merge: {len(bank) // 4096 + 1} chunk files of 4096 rows into one bank file: {seconds:.1f} s, "
          f"peak memory +{peak / 2**20:.0f} MiB (the bank is {size / 2**20:.0f} MiB); loading it: "
          f"+{load_peak / 2**20:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
