"""Summarise the variants study (benchmarks/variants_study.sh): the selection split, the held-out
table with class following and the sanity check, and each method's time beside DAAM's.

    python benchmarks/variants_summary.py runs/variants_study
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from vitflow.baselines import baseline_names

VARIANTS = ["daam_rollout", "daam_generic", "daam_concentration"]
BASELINES = baseline_names()
FOUR = ["pointing_game", "energy", "perturbation_pos", "insertion"]
HIGHER = {"pointing_game": True, "energy": True, "perturbation_pos": False, "insertion": True}


def _table(results: dict, methods: list[str], metrics: list[str]) -> list[str]:
    rows = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for m in methods:
        rows.append(f"| {m} | " + " | ".join(f"{results['methods'][m][k]:.3f}" for k in metrics) + " |")
    return rows


def _timing(methods: list[str], repeats: int = 3) -> dict[str, float]:
    from vitflow.adapters import resolve_adapter
    from vitflow.data.scenes import generate_scene
    from vitflow.demo import load_demo_model
    from vitflow.evaluation import explain_all

    model, pre = load_demo_model()
    x = torch.stack([pre(Image.fromarray(generate_scene(11, i).image)) for i in range(32)])
    target = torch.zeros(32, dtype=torch.long)
    adapter = resolve_adapter(model)
    out = {}
    for m in methods:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            explain_all(adapter, x, target, [m])
            times.append(time.perf_counter() - start)
        out[m] = statistics.median(times)
    return out


def main(root: Path) -> None:
    select = json.loads((root / "eval_select" / "results.json").read_text())
    held = json.loads((root / "eval_heldout" / "results.json").read_text())
    two = json.loads((root / "eval_two" / "results.json").read_text())
    sanity = json.loads((root / "eval_heldout" / "sanity.json").read_text())[
        "spearman_after_top_k_randomised"
    ]
    print(f"## Selection split (stream seed 5, {select['items']} scenes)\n")
    print("\n".join(_table(select, ["daam", *VARIANTS, "generic_attention"], FOUR)))
    methods = ["daam", *VARIANTS, "daam_last_block", "daam_block_norm", *BASELINES]
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
    print("\n## The criterion: beats every shipped baseline on at least 3 of the 4, on the held-out split\n")
    for v in VARIANTS:
        wins = []
        for k in FOUR:
            ours = held["methods"][v][k]
            best = [held["methods"][b][k] for b in BASELINES]
            if (HIGHER[k] and ours > max(best)) or (not HIGHER[k] and ours < min(best)):
                wins.append(k)
        follows = two["methods"][v]["pointing_game"] >= two["methods"]["daam"]["pointing_game"]
        print(f"- {v}: beats every baseline on {len(wins)} of 4 ({', '.join(wins) or 'none'}); "
              f"two-object pointing {'>=' if follows else '<'} DAAM's; "
              f"sanity after all blocks randomised {sanity[v][-1]:.3f} (DAAM {sanity['daam'][-1]:.3f}, "
              f"rollout {sanity['rollout'][-1]:.3f})")  # fmt: skip
    timing = _timing(["daam", *VARIANTS, "generic_attention", "rollout"])
    print("\n## Time for 32 scenes (CPU, median of 3; the attention trace included where used)\n")
    for m, t in timing.items():
        print(f"- {m}: {t * 1000:.0f} ms ({t / timing['daam']:.2f}x DAAM)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/variants_study"))
