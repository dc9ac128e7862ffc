"""DAAM's per-block curves from one or more `vitflow evaluate` runs in one plot (the README's
docs/eval_per_block.png joins the localisation and the faithfulness runs):

    python scripts/plot_per_block.py eval_masks/results.json eval_faith/results.json \
        --out docs/eval_per_block.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitflow.runs.report import _plot_curves


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of vitflow evaluate")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    curves: dict[str, list[float]] = {}
    for path in args.results:
        for metric, values in json.loads(path.read_text())["daam_per_block"].items():
            if metric in curves and curves[metric] != values:
                raise SystemExit(f"{path}: {metric} differs from an earlier file; give each metric once")
            curves[metric] = values
    if not curves:
        raise SystemExit("no per-block curves in these files (run vitflow evaluate with --per-block-metrics)")
    _plot_curves({"daam": curves}, args.out)
    print(f"wrote {args.out} ({', '.join(sorted(curves))})")


if __name__ == "__main__":
    main()
