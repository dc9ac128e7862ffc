"""Running registered metrics: their names and directions, and every requested metric for one
method's maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vitflow.metrics.context import ScoringContext
from vitflow.registry import METRICS


def metric_names() -> list[str]:
    return METRICS.names()


def default_per_block_metrics(metrics: Sequence[str] | None = None) -> list[str]:
    """The metrics that can score the map after every block: of ``metrics`` (in their order), or
    all of them."""
    capable = [e.name for e in METRICS.entries() if e.info.get("per_block")]
    return capable if metrics is None else [m for m in metrics if m in capable]


def higher_is_better(metric: str) -> bool:
    return METRICS.lookup(metric)[0].info["higher_is_better"]


def score_maps(
    context: ScoringContext, maps: torch.Tensor, metrics: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Every requested metric for one method's ``(B, h, w)`` maps: ``{metric: (B,)}`` on the CPU;
    mask metrics are left out when the batch has no masks."""
    out = {}
    for name in metrics:
        if METRICS.lookup(name)[0].info["needs_mask"] and context.masks is None:
            continue
        out[name] = METRICS.call(name, maps, context).double().cpu()
    return out

