"""Chefer et al.'s evaluation numbers (CVPR 2021) exactly as their published code computes them,
per batch, for ``vitflow evaluate --protocol chefer`` (``vitflow.runs.protocol``).

They differ from vitflow's registered metrics on purpose: vitflow's ``miou`` / ``ap`` /
``perturbation_*`` (``vitflow.metrics.localization``, ``vitflow.metrics.faithfulness``)
score each image on its own, in the model's own preprocessing; these sum pixel counts over the
dataset, score the background channel too and integrate accuracy without dividing by the range,
so their numbers sit beside the paper's tables. The average precision is the one both use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from vitflow.core.maps import upsample
from vitflow.metrics.localization import average_precision

STEPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def normalised_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` maps -> ``(B, H, W)``: bilinear upsampling (half-pixel centres, as
    ``F.interpolate(scale_factor=16, mode='bilinear')``), then per-image min-max. A constant map
    becomes all zeros (theirs becomes NaN, which every later step treats as 0)."""
    big = upsample(maps.float(), size) if maps.shape[-2:] != torch.Size(size) else maps.float()
    low = big.amin(dim=(1, 2), keepdim=True)
    span = big.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (big - low) / span.clamp_min(1e-30), torch.zeros_like(big))


def segmentation_counts(unit: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: ``correct`` and ``labeled`` pixels, ``inter``/``union`` ``(B, 2)`` for
    (background, foreground), ``ap`` over both channels. ``unit``: normalised maps; ``masks`` bool."""
    truth = masks.to(unit.device).bool().flatten(1)
    flat = unit.flatten(1)
    foreground = flat > flat.mean(dim=1, keepdim=True)  # a constant (all-zero) map: all background
    counts = {
        "correct": (foreground == truth).sum(dim=1),
        "labeled": torch.full((flat.shape[0],), flat.shape[1], device=flat.device),
        "inter": torch.stack([(~foreground & ~truth).sum(1), (foreground & truth).sum(1)], dim=1),
        "union": torch.stack([(~foreground | ~truth).sum(1), (foreground | truth).sum(1)], dim=1),
    }
    scores = torch.cat([1 - flat, flat], dim=1)  # background channel, then foreground
    positives = torch.cat([~truth, truth], dim=1)
    counts["ap"] = average_precision(scores.double(), positives).nan_to_num(0.0)
    return counts


def perturbation_hits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    unit: torch.Tensor,
    labels: torch.Tensor,
    black: torch.Tensor,
    positive: bool,
    steps: Sequence[float] = STEPS,
    intact: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, 1 + len(steps))`` bool: top-1 correct on the intact input, then after blacking out
    each step's share of pixels, most relevant first (``positive``) or least relevant first.
    ``black``: ``(3,)`` the normalised value of a zero pixel; ``intact``: ``(B,)`` the intact
    input's hits when the caller has them (one forward pass less)."""
    batch, channels = x.shape[:2]
    pixels = x.shape[-2] * x.shape[-1]
    ranking = (unit if positive else -unit).reshape(batch, -1)
    with torch.no_grad():
        hits = [forward(x).argmax(1) == labels if intact is None else intact]
        for step in steps:
            _, idx = torch.topk(ranking, int(pixels * step), dim=-1)
            removed = torch.zeros(batch, pixels, dtype=torch.bool, device=x.device)
            removed.scatter_(1, idx, True)
            removed = removed.reshape(batch, 1, *x.shape[-2:])
            perturbed = torch.where(
                removed, black.to(x)[None, :, None, None].expand(batch, channels, 1, 1), x
            )
            hits.append(forward(perturbed).argmax(1) == labels)
    return torch.stack(hits, dim=1)


def auc(accuracy: Sequence[float], steps: Sequence[float] = STEPS) -> float:
    """``trapz(accuracy, [0, *steps]) * 100`` (their AUC: not divided by the range)."""
    x = np.array([0.0, *steps])
    y = np.asarray(accuracy, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) * 100)
