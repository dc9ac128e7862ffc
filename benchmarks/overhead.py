"""DAAM's cost against the least any gradient-weighted explanation must do.

Baseline: one forward pass and one backward pass of the explained class score down to the first
block's attention output (parameters frozen, as in DAAM). DAAM adds the hooks, the [class]
attention rows, the decomposition check and the maps. Both run on the same model and batch,
interleaved, in one process; the script prints the median times, their ratio, and the peak
memory of each (CUDA: allocator peak; CPU: peak resident-set growth, sampled every ms, in a
fresh subprocess per variant).

    python benchmarks/overhead.py                       # deit_small_patch16_224, batch 8, 224 px
    python benchmarks/overhead.py --model vit_base_patch16_224 --size 384 --batch 4 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import PeakMemory  # noqa: E402

from vitflow import DAAM  # noqa: E402


def build(args):
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, img_size=args.size).eval().to(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    return model, x


def baseline_step(model, x):
    """Forward, then d(class score)/d(first block's attention output); parameters frozen."""
    anchor = {}

    def start_graph(_module, inputs):
        leaf = torch.zeros((), device=x.device, requires_grad=True)
        anchor["out"] = inputs[0] + leaf
        return (anchor["out"],)

    handle = model.blocks[0].attn.norm.register_forward_pre_hook(start_graph)
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            logits = model(x)
            score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            (grad,) = torch.autograd.grad(score, [anchor["out"]])
        for p in params:
            p.requires_grad_(True)
        return grad
    finally:
        handle.remove()


def explicit_attention_step(model, x):
    """What explainers that need the attention matrix do: fused attention off, every block's full
    N x N attention kept (as daam-timm-vit and the published scripts do), then the same backward."""
    stored, handles = [], []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: stored.append(out)))
    try:
        return baseline_step(model, x), stored
    finally:
        for handle in handles:
            handle.remove()
        for block in model.blocks:
            block.attn.fused_attn = True


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def memory_child(args) -> None:
    """Run one variant once in this fresh process and print its peak memory growth."""
    model, x = build(args)
    daam = DAAM(model)
    step = {
        "daam": lambda: daam(x),
        "baseline": lambda: baseline_step(model, x),
        "explicit": lambda: explicit_attention_step(model, x),
    }[args.variant]
    with PeakMemory(args.device) as peak:
        step()
    print(json.dumps({"peak_bytes": peak.bytes}))


def measure_memory(args, variant: str) -> int:
    cmd = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--model",
        args.model,
        "--batch",
        str(args.batch),
        "--size",
        str(args.size),
        "--device",
        args.device,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-memory", action="store_true", help="times only (no memory subprocesses)")
    parser.add_argument("--variant", choices=("daam", "baseline", "explicit"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        memory_child(args)
        return

    model, x = build(args)
    daam = DAAM(model)
    for _ in range(2):  # warm-up
        daam(x)
        baseline_step(model, x)
        explicit_attention_step(model, x)
    base_times, daam_times, explicit_times = [], [], []
    for _ in range(args.repeats):  # interleaved so drift hits all alike
        base_times.append(timed(lambda: baseline_step(model, x), args.device))
        daam_times.append(timed(lambda: daam(x), args.device))
        explicit_times.append(timed(lambda: explicit_attention_step(model, x), args.device))
    daam.close()
    base, ours = statistics.median(base_times), statistics.median(daam_times)
    explicit = statistics.median(explicit_times)
    if args.no_memory:
        base_mem = daam_mem = explicit_mem = float("nan")
    else:
        base_mem, daam_mem = measure_memory(args, "baseline"), measure_memory(args, "daam")
        explicit_mem = measure_memory(args, "explicit")

    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"{args.model}, batch {args.batch}, {args.size} px, {device_name}, torch {torch.__version__}")
    print(f"{'':22}{'median s':>10}{'peak MiB':>10}")
    print(f"{'forward + backward':22}{base:10.3f}{base_mem / 2**20:10.1f}")
    print(f"{'DAAM (all blocks)':22}{ours:10.3f}{daam_mem / 2**20:10.1f}")
    print(f"{'unfused, N x N kept':22}{explicit:10.3f}{explicit_mem / 2**20:10.1f}  (for comparison)")
    print(f"time ratio DAAM / baseline: {ours / base:.3f}   memory ratio: {daam_mem / max(base_mem, 1):.3f}")


if __name__ == "__main__":
    main()
