"""Faithfulness of an explanation: does removing what it points at change the decision?

``forward(x) -> (N, K) logits`` is any callable (a model in eval mode). Inputs are in the
model's input space; removed pixels take ``fill`` (0 = the dataset mean after normalisation).
Every perturbed version of one image goes through the model in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from vitflow.core.maps import gaussian_blur, minmax
from vitflow.metrics.context import ScoringContext
from vitflow.metrics.localization import upsample_maps
from vitflow.registry import register_metric

Forward = Callable[[torch.Tensor], torch.Tensor]
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _auc(values: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under ``values`` ``(B, S)`` over ``fractions``, divided by their range."""
    return torch.trapezoid(values, fractions, dim=1) / (fractions[-1] - fractions[0])


def _ranks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel order per image, most relevant first: ``(B, H*W)`` indices."""
    return upsample_maps(maps, size).flatten(1).argsort(dim=1, descending=True, stable=True)


@torch.no_grad()
def _scores(
    forward: Forward, inputs: torch.Tensor, target: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    probs, hits = [], []
    for start in range(0, len(inputs), batch_size):
        logits = forward(inputs[start : start + batch_size])
        probs.append(logits.softmax(dim=1)[:, target])
        hits.append(logits.argmax(dim=1) == target)
    return torch.cat(probs), torch.cat(hits)


def _sweep(forward, x, order, target, counts, start_from, source, batch_size):
    """For one image: replace the first ``count`` pixels of ``order`` in ``start_from`` by ``source``."""
    channels, height, width = x.shape
    versions = []
    for count in counts:
        keep = torch.zeros(height * width, dtype=torch.bool, device=x.device)
        keep[order[:count]] = True
        keep = keep.reshape(1, height, width)
        versions.append(torch.where(keep, source, start_from))
    return _scores(forward, torch.stack(versions), target, batch_size)


def perturbation_test(
    forward: Forward,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: torch.Tensor,
    fractions: Sequence[float] = FRACTIONS,
    positive: bool = True,
    fill: float = 0.0,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Chefer et al.'s perturbation test: remove the ``fraction`` most (``positive``) or least
    relevant pixels and record top-1 correctness and the target's probability.

    Returns ``accuracy`` and ``probability`` curves ``(B, S)`` and their areas ``auc_accuracy``,
    ``auc_probability`` ``(B,)`` (trapezoid over ``fractions``, divided by their range). Lower
    positive AUC and higher negative AUC mean a more faithful map.
    """
    height, width = x.shape[-2:]
    order = _ranks(maps, (height, width))
    if not positive:
        order = order.flip(dims=[1])
    counts = [round(f * height * width) for f in fractions]
    grid = torch.tensor(list(fractions), dtype=torch.float64)
    probabilities, hits = [], []
    for i in range(len(x)):
        p, hit = _sweep(
            forward, x[i], order[i], int(target[i]), counts, x[i], torch.full_like(x[i], fill), batch_size
        )
        probabilities.append(p.double().cpu())
        hits.append(hit.double().cpu())
    probability, accuracy = torch.stack(probabilities), torch.stack(hits)
    return {
        "accuracy": accuracy,
        "probability": probability,
        "auc_accuracy": _auc(accuracy, grid),
        "auc_probability": _auc(probability, grid),
    }


def deletion_insertion(
    forward: Forward,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: torch.Tensor,
    steps: int = 16,
    fill: float = 0.0,
    blur_sigma: float = 5.0,
    batch_size: int = 32,
    which: Sequence[str] = ("deletion", "insertion"),
) -> dict[str, torch.Tensor]:
    """RISE's deletion and insertion: the target's probability while pixels are deleted (set to
    ``fill``) or inserted into a blurred copy, most relevant first, in ``steps`` equal steps.

    Returns ``deletion`` and ``insertion`` curves ``(B, steps + 1)`` and ``deletion_auc`` (lower is
    better) and ``insertion_auc`` (higher is better), ``(B,)``; only the sweeps named in ``which``.
    """
    height, width = x.shape[-2:]
    order = _ranks(maps, (height, width))
    counts = [round(s * height * width / steps) for s in range(steps + 1)]
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    # (start from, pixels brought in) per sweep: deletion fills the image, insertion un-blurs it
    sweeps = {"deletion": lambda i: (x[i], torch.full_like(x[i], fill))}
    if "insertion" in which:
        blurred = gaussian_blur(x, blur_sigma)
        sweeps["insertion"] = lambda i: (blurred[i], x[i])
    out = {}
    for name in which:
        curves = []
        for i in range(len(x)):
            start_from, source = sweeps[name](i)
            curve, _ = _sweep(forward, x[i], order[i], int(target[i]), counts, start_from, source, batch_size)
            curves.append(curve.double().cpu())
        out[name] = torch.stack(curves)
        out[f"{name}_auc"] = _auc(out[name], grid)
    return out


@torch.no_grad()
def confidence_change(forward: Forward, x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor) -> dict:
    """Average drop and increase in confidence (Chattopadhyay et al. 2018): the image multiplied
    by its min-max normalised map. Returns per-image ``drop`` (``relu(p - o) / p``) and
    ``increase`` (``o > p``) and their means ``average_drop`` (%, lower is better) and
    ``increase_in_confidence`` (%, higher is better)."""
    big = upsample_maps(maps, x.shape[-2:])
    unit = minmax(big.flatten(1)).reshape(big.shape)
    index = torch.arange(len(x), device=x.device)
    original = forward(x).softmax(1)[index, target]
    masked = forward(x * unit[:, None]).softmax(1)[index, target]
    drop = (original - masked).clamp_min(0) / original.clamp_min(1e-30)
    increase = masked > original
    return {
        "drop": drop.double().cpu(),
        "increase": increase.cpu(),
        "average_drop": 100 * float(drop.mean()),
        "increase_in_confidence": 100 * float(increase.double().mean()),
    }


# -- the registry: what `vitflow evaluate --metrics` offers ------------------------------------


@register_metric("perturbation_pos", higher_is_better=False, needs_mask=False, per_block=True)
def _perturbation_pos(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Top-1 accuracy AUC while the most relevant pixels are removed (10%..90%)."""
    return perturbation_test(context.forward, context.x, maps, context.target)["auc_accuracy"]


@register_metric("perturbation_neg", higher_is_better=True, needs_mask=False)
def _perturbation_neg(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Top-1 accuracy AUC while the least relevant pixels are removed."""
    return perturbation_test(context.forward, context.x, maps, context.target, positive=False)["auc_accuracy"]


@register_metric("deletion", higher_is_better=False, needs_mask=False)
def _deletion(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Target probability AUC while pixels are deleted, most relevant first (RISE)."""
    return deletion_insertion(context.forward, context.x, maps, context.target, which=("deletion",))[
        "deletion_auc"
    ]


@register_metric("insertion", higher_is_better=True, needs_mask=False, per_block=True)
def _insertion(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Target probability AUC while pixels are inserted into a blurred copy (RISE)."""
    return deletion_insertion(context.forward, context.x, maps, context.target, which=("insertion",))[
        "insertion_auc"
    ]


@register_metric("average_drop", higher_is_better=False, needs_mask=False)
def _average_drop(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Drop in confidence (%) when the image is multiplied by its normalised map."""
    return 100 * confidence_change(context.forward, context.x, maps, context.target)["drop"]


@register_metric("increase", higher_is_better=True, needs_mask=False)
def _increase(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Whether confidence rises (%) when the image is multiplied by its normalised map."""
    return 100 * confidence_change(context.forward, context.x, maps, context.target)["increase"].double()
