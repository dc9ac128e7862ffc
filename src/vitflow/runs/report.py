"""An evaluation's report: ``records.jsonl`` aggregated into results.json, results.csv,
results.md (best value in bold) and per_block.png (every flow's curves, metric by metric)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from vitflow.atomic import write_bytes_atomic, write_json_atomic
from vitflow.metrics.run import higher_is_better


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _no_nan(value):
    """``value`` with every NaN float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def summarize(out: Path, methods: Sequence[str], metrics: Sequence[str]) -> dict:
    """Aggregate ``records.jsonl`` into results.json, results.csv, results.md and per_block.png."""
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    present = [m for m in metrics if any(m in r["scores"].get(methods[0], {}) for r in records)]
    table = {m: {k: _mean([r["scores"][m][k] for r in records if k in r["scores"][m]]) for k in present}
             for m in methods}  # fmt: skip
    curves = {m: _curves([r["per_block"].get(m, []) for r in records]) for m in _flow_names(records)}
    summary = {
        "items": len(records),
        "accuracy": _mean([float(r["correct"]) for r in records]),
        "methods": table,
        "per_block": curves,
        "daam_per_block": curves.get("daam", {}),  # DAAM's curves, as results.json has always had them
        "higher_is_better": {k: higher_is_better(k) for k in present},
    }
    write_json_atomic(out / "results.json", _no_nan(summary))
    csv = ["method," + ",".join(present)] + [
        m + "," + ",".join(f"{table[m][k]:.4f}" for k in present) for m in methods
    ]
    write_bytes_atomic(out / "results.csv", ("\n".join(csv) + "\n").encode())
    arrows = [f"{k} {'↑' if higher_is_better(k) else '↓'}" for k in present]
    md = ["| method | " + " | ".join(arrows) + " |", "|---|" + "---:|" * len(present)]
    for m in methods:
        cells = []
        for k in present:
            values = [table[other][k] for other in methods if not math.isnan(table[other][k])]
            best = (max(values) if higher_is_better(k) else min(values)) if values else None
            value = table[m][k]
            shown = "–" if math.isnan(value) else f"{value:.3f}"
            cells.append(f"**{shown}**" if value == best else shown)
        md.append(f"| {m} | " + " | ".join(cells) + " |")
    write_bytes_atomic(out / "results.md", ("\n".join(md) + "\n").encode())
    if any(curves.values()):
        try:
            _plot_curves(curves, out / "per_block.png")
        except ImportError:  # matplotlib is an extra: one picture less, never the run
            summary["notes"] = ["per_block.png not drawn: it needs matplotlib (pip install 'vitflow[cli]')"]
    return summary


def _flow_names(records: list[dict]) -> list[str]:
    names: list[str] = []
    for r in records:
        names += [m for m in r["per_block"] if m not in names]
    return names


def _curves(per_item: list[list[dict]]) -> dict[str, list[float | None]]:
    """``{metric: mean over items, block by block}`` from each item's per-block scores; an empty
    map (nothing accumulated yet, as before ``daam_from_K``'s block K) is scored NaN and left out
    of the mean, and a block with no map at all gets ``None``."""
    blocks = max((len(p) for p in per_item), default=0)
    keys = sorted({k for p in per_item for s in p for k in s})
    curves = {k: [_mean([p[b][k] for p in per_item if len(p) > b and k in p[b]]) for b in range(blocks)]
              for k in keys}  # fmt: skip
    return {k: [None if math.isnan(v) else v for v in values] for k, values in curves.items()}


def _nan(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _plot_curves(curves: dict[str, dict[str, list[float | None]]], path: Path) -> None:
    """``{method: {metric: curve}}``: one panel per metric, one line per method."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({k for c in curves.values() for k in c})
    if len(curves) > 1:
        cols = min(3, len(metrics))
        rows = -(-len(metrics) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.8, 3.0 * rows), constrained_layout=True,
                                 squeeze=False)  # fmt: skip
        for ax, metric in zip(axes.flat, metrics, strict=False):
            for method, by_metric in curves.items():
                if metric in by_metric:
                    values = by_metric[metric]
                    ax.plot(range(1, len(values) + 1), _nan(values), marker="o", markersize=3, label=method)
            ax.set_title(f"{metric} {'↑' if higher_is_better(metric) else '↓'}", fontsize=9)
            ax.set_xlabel("block (accumulated map after it)", fontsize=8)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="outside right center")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=130)
        plt.close(fig)
        write_bytes_atomic(path, buffer.getvalue())
        return
    ((method, single),) = curves.items()
    fig, ax = plt.subplots(figsize=(7.2, 3.6), constrained_layout=True)
    for name, values in single.items():
        arrow = "↑" if higher_is_better(name) else "↓"  # which way is better
        ax.plot(range(1, len(values) + 1), _nan(values), marker="o", label=f"{name} {arrow}")
    ax.set_xlabel(f"block (accumulated {method} map after it)")
    ax.set_ylabel("score")
    ax.set_title(f"{method} quality block by block")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # never over a curve
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())

