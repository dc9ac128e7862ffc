"""Where one DAAM call spends its time beside the forward and backward pass it needs: the operator
counts and the top operators by self CPU time (the launch-bound regime: a small model on a small
batch) of DAAM and of the baseline of benchmarks/overhead.py, from torch.profiler.

    python benchmarks/profile_call.py --device cuda --batch 8
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import baseline_step, build, sync  # noqa: E402

from vitflow import DAAM  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    model, x = build(args)
    daam = DAAM(model)
    steps = {"baseline": lambda: baseline_step(model, x), "daam": lambda: daam(x)}
    for _ in range(3):
        for step in steps.values():
            step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    for name, step in steps.items():
        sync(args.device)
        start = time.perf_counter()
        step()
        sync(args.device)
        wall = time.perf_counter() - start
        with profile(activities=activities) as prof:
            step()
            sync(args.device)
        events = prof.events()
        top = [
            e
            for e in events
            if e.name.startswith("aten::")
            and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
        ]
        kernels = [
            e
            for e in events
            if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")
        ]
        counts = f"{len(top)} top-level aten ops, {len(kernels)} device events"
        print(f"\n### {name}: {wall * 1000:.2f} ms unprofiled; {counts}")
        print("most frequent:", Counter(e.name for e in top).most_common(12))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
