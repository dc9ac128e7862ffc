"""Throughput per world size: ``torchrun --standalone --nproc_per_node=N -m vitflow ...`` for
``explain --save-maps --no-images``, ``evaluate`` and ``bank build`` on the same procedural scenes,
N = 1, 2, ... (gloo on CPU, NCCL with ``--device cuda``). Wall-clock time of the whole command,
imports, model loading and process start included (about 3 s a run here): use enough images for
the start-up to matter little.

    python benchmarks/scaling.py                          # demo ViT, 96 scenes, 1 and 2 processes
    python benchmarks/scaling.py --procs 1,2,4,8 --device cuda --images 2048

Every process gets ``OMP_NUM_THREADS`` = cores / N (torchrun's default is 1 thread per process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vitflow.data.scenes import write_scenes

COMMANDS = {
    "explain (maps only)": [
        "explain", "scenes/images", "--out", "out_explain", "--save-maps", "--no-images", "--chunk", "16",
    ],
    "evaluate (daam, rollout; energy, pointing game)": [
        "evaluate", "--data", "scenes", "--out", "out_evaluate", "--methods", "daam,rollout", "--metrics",
        "energy,pointing_game", "--per-block-metrics", "energy", "--chunk", "16",
    ],
    "bank build": ["bank", "build", "--data", "scenes/images", "--out", "out.bank", "--chunk", "16"],
}  # fmt: skip


def run(folder: Path, args: list[str], procs: int, device: str) -> float:
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // procs))}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    command = [*launch, "-m", "vitflow", *args, "--device", device, "--quiet", "--batch-size", "8"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} with {procs} processes failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--procs", default="1,2", help="world sizes, comma-separated (default 1,2)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_scenes(folder / "scenes", args.images, seed=9, size=96)
        print(f"{args.images} demo scenes, demo ViT, batch 8, {args.device}, "
              f"{len(os.sched_getaffinity(0))} CPU cores\n")  # fmt: skip
        print("| command | " + " | ".join(f"{p} proc: images/s" for p in procs) + " | speed-up |")
        print("|---|" + "---:|" * (len(procs) + 1))
        for name, command in COMMANDS.items():
            rates = []
            for p in procs:
                for out in folder.glob("out*"):
                    subprocess.run(["rm", "-rf", str(out)], check=True)
                rates.append(args.images / run(folder, command, p, args.device))
            cells = " | ".join(f"{r:.1f}" for r in rates)
            print(f"| {name} | {cells} | {rates[-1] / rates[0]:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
