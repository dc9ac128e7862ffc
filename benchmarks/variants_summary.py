"""Summarise the variants study (benchmarks/variants_study.sh): the selection split, the held-out
table with class following and the sanity check, and each method's time beside DAAM's.

    python benchmarks/variants_summary.py runs/variants_study
    python benchmarks/variants_summary.py runs/real_study --model vit_small_patch14_dinov2 \
        --checkpoint runs/real_study/model.safetensors      # the real-weights study
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import PeakMemory  # noqa: E402

from vitflow.methods import baseline_names  # noqa: E402
from vitflow.methods.run import is_flow_method, method_names  # noqa: E402

# DAAM's variants that make a flow, besides DAAM and its published options
VARIANTS = [
    m for m in method_names() if m.startswith("daam_") and is_flow_method(m) and m != "daam_block_norm"
]
BASELINES = baseline_names()
FOUR = ["pointing_game", "energy", "perturbation_pos", "insertion"]
HIGHER = {"pointing_game": True, "energy": True, "perturbation_pos": False, "insertion": True}


def _table(results: dict, methods: list[str], metrics: list[str]) -> list[str]:
    rows = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for m in methods:
        rows.append(f"| {m} | " + " | ".join(f"{results['methods'][m][k]:.3f}" for k in metrics) + " |")
    return rows


def _load(args):
    from vitflow.models import LoadedModel, load_model

    if args.model is None:
        from vitflow.models.demo import load_demo_model

        model, pre = load_demo_model()
        return LoadedModel(model, pre, None, "demo")
    return load_model(args.model, args.checkpoint)


def _batch(args, loaded):
    """The first ``--batch`` held-out scenes, preprocessed for the model, on the device."""
    from vitflow.data.items import read_items

    items = read_items(args.root / "heldout")[: args.batch]
    x = torch.stack([loaded.preprocessing(Image.open(i.path).convert("RGB")) for i in items])
    return x.to(args.device), torch.tensor([i.target for i in items], device=args.device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_child(args) -> None:
    """One method once in this fresh process: print its peak memory growth (CPU: resident set
    sampled every millisecond; CUDA: the allocator's peak)."""
    from vitflow.adapters import resolve_adapter
    from vitflow.methods.run import explain_all

    loaded = _load(args)
    model = loaded.model.to(args.device)
    x, target = _batch(args, loaded)
    adapter = resolve_adapter(model)
    with PeakMemory(args.device) as peak:
        explain_all(adapter, x, target, [args.peak])
    print(json.dumps({"peak_bytes": peak.bytes}))


def _cost(args, methods: list[str], repeats: int = 3) -> dict[str, tuple[float, int]]:
    """Each method's median time for one batch (the attention trace included where used) and its
    peak memory, measured in a fresh process per method."""
    from vitflow.adapters import resolve_adapter
    from vitflow.methods.run import explain_all

    loaded = _load(args)
    model = loaded.model.to(args.device)
    x, target = _batch(args, loaded)
    adapter = resolve_adapter(model)
    out = {}
    for m in methods:
        explain_all(adapter, x, target, [m])  # warm-up
        times = []
        for _ in range(repeats):
            _sync(args.device)
            start = time.perf_counter()
            explain_all(adapter, x, target, [m])
            _sync(args.device)
            times.append(time.perf_counter() - start)
        command = [sys.executable, __file__, str(args.root), "--peak", m, "--device", args.device,
                   "--batch", str(args.batch)]  # fmt: skip
        if args.model:
            command += ["--model", args.model] + (
                ["--checkpoint", str(args.checkpoint)] if args.checkpoint else []
            )
        peak = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
        out[m] = (statistics.median(times), peak["peak_bytes"])
    return out


def main(args) -> None:
    root = args.root
    variants = list(VARIANTS)
    chosen = root / "chosen_start.txt"
    if chosen.exists():  # DAAM from the start block chosen on the selection split
        variants.append(chosen.read_text().strip())
    select = json.loads((root / "eval_select" / "results.json").read_text())
    held = json.loads((root / "eval_heldout" / "results.json").read_text())
    two = json.loads((root / "eval_two" / "results.json").read_text())
    sanity = json.loads((root / "eval_heldout" / "sanity.json").read_text())[
        "spearman_after_top_k_randomised"
    ]
    print(f"## Selection split (stream seed 5, {select['items']} scenes)\n")
    print("\n".join(_table(select, list(select["methods"]), FOUR)))
    methods = ["daam", *variants, "daam_last_block", "daam_block_norm", *BASELINES]
    print(
        f"\n## Held-out (stream seed 11, {held['items']} single-object scenes; "
        f"two-object: {two['items']} objects)\n"
    )
    header = FOUR + ["two-object pointing", "two-object energy", "sanity: top-1", "sanity: all"]
    print("| method | " + " | ".join(header) + " |")
    print("|---|" + "---:|" * len(header))
    for m in methods:
        cells = [f"{held['methods'][m][k]:.3f}" for k in FOUR]
        cells += [f"{two['methods'][m]['pointing_game']:.3f}", f"{two['methods'][m]['energy']:.3f}"]
        cells += [f"{sanity[m][0]:.3f}", f"{sanity[m][-1]:.3f}"]
        print(f"| {m} | " + " | ".join(cells) + " |")
    print("\n## Per block, held-out (the accumulated map after each block)\n")
    curves = held.get("per_block", {})
    for metric in ("pointing_game", "energy"):
        present = [m for m in curves if metric in curves[m]]
        if not present:
            continue
        blocks = len(curves[present[0]][metric])
        print(f"{metric}:\n\n| method | " + " | ".join(str(b) for b in range(1, blocks + 1)) + " |")
        print("|---|" + "---:|" * blocks)
        for m in present:
            cells = ["–" if v is None else f"{v:.2f}" for v in curves[m][metric]]
            print(f"| {m} | " + " | ".join(cells) + " |")
        print()
    print("\n## The criterion: beats every shipped baseline on at least 3 of the 4, on the held-out split\n")
    baselines = [b for b in BASELINES if b in held["methods"]]
    for v in variants:
        wins, margins = [], []
        for k in FOUR:
            ours = held["methods"][v][k]
            pick = max if HIGHER[k] else min
            best = pick(baselines, key=lambda b: held["methods"][b][k])
            margin = (ours - held["methods"][best][k]) * (1 if HIGHER[k] else -1)  # > 0: ahead
            margins.append(f"{k} {margin:+.3f} vs {best}")
            if margin > 0:
                wins.append(k)
        follows = two["methods"][v]["pointing_game"] >= two["methods"]["daam"]["pointing_game"]
        print(f"- {v}: beats every baseline on {len(wins)} of 4 ({'; '.join(margins)}); "
              f"two-object pointing {'>=' if follows else '<'} DAAM's; "
              f"sanity after all blocks randomised {sanity[v][-1]:.3f} (DAAM {sanity['daam'][-1]:.3f}, "
              f"rollout {sanity['rollout'][-1]:.3f})")  # fmt: skip
    if args.no_cost:
        return
    _print_cost(args, [m for m in methods if m in held["methods"]])


def _print_cost(args, methods: list[str]) -> None:
    cost = _cost(args, ["daam", *[m for m in methods if m != "daam"]])
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"\n## Cost for {args.batch} scenes ({where}; median of 3, the attention trace included where used)\n"
    )
    print("| method | time | × DAAM | peak memory | × DAAM |")
    print("|---|---:|---:|---:|---:|")
    for m, (t, peak) in cost.items():
        base_t, base_peak = cost["daam"]
        ratio = peak / max(base_peak, 1)
        print(f"| {m} | {t * 1000:.0f} ms | {t / base_t:.2f} | {peak / 2**20:.0f} MiB | {ratio:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, nargs="?", default=Path("runs/variants_study"))
    parser.add_argument("--model", help="the study's model (default: the demo ViT)")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-cost", action="store_true", help="leave out the time and memory table")
    parser.add_argument("--cost", help="only the time and memory table, for these methods (comma-separated; "
                        "ROOT/heldout holds the scenes)")  # fmt: skip
    parser.add_argument("--peak", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.peak:
        _peak_child(arguments)
    elif arguments.cost:
        _print_cost(arguments, arguments.cost.split(","))
    else:
        main(arguments)
