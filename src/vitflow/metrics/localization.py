"""Localisation of an explanation against ground-truth object masks.

All functions take ``maps`` ``(B, h, w)`` (non-negative explanation maps, e.g. ``result.final``)
and ``masks`` ``(B, H, W)`` bool; maps are upsampled bilinearly to the mask size first, as the
overlays show them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vitflow.core.maps import minmax, upsample
from vitflow.metrics.context import ScoringContext
from vitflow.registry import register_metric


def upsample_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(B, h, w)`` maps -> ``(B, H, W)`` float32, bilinear (half-pixel centres), as overlays show them."""
    return upsample(maps.float(), size)


def _prepare(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if maps.ndim != 3 or masks.ndim != 3 or maps.shape[0] != masks.shape[0]:
        raise ValueError(
            f"expected (B, h, w) maps and (B, H, W) masks, got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    big = upsample_maps(maps, masks.shape[-2:]).flatten(1)
    return big, masks.to(big.device).flatten(1).bool()


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Whether each map's maximum lies inside the mask, ``(B,)`` bool. A constant map (no
    maximum) counts as a miss."""
    big, flat_masks = _prepare(maps, masks)
    hits = flat_masks.gather(1, big.argmax(dim=1, keepdim=True))[:, 0]
    return hits & (big.amax(dim=1) > big.amin(dim=1))


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass inside the mask, ``(B,)`` in [0, 1] (0 for an all-zero map)."""
    big, flat_masks = _prepare(maps, masks)
    big = big.clamp_min(0)
    total = big.sum(dim=1)
    inside = (big * flat_masks).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(total))


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Average precision of ``scores`` ranking ``positives`` (one row per image), ties counted
    together as scikit-learn does; ``nan`` where a row has no positive."""
    out = []
    for score, positive in zip(scores, positives, strict=True):
        order = torch.argsort(score, descending=True)
        s, p = score[order], positive[order].double()
        tp = p.cumsum(0)
        # the last index of each run of equal scores is where precision/recall are evaluated
        last = torch.ones_like(s, dtype=torch.bool)
        last[:-1] = s[1:] != s[:-1]
        tp_at, n_at = tp[last], torch.nonzero(last)[:, 0].double() + 1
        total = p.sum()
        if total == 0:
            out.append(torch.tensor(float("nan"), dtype=torch.float64, device=score.device))
            continue
        recall = tp_at / total
        precision = tp_at / n_at
        recall_steps = torch.diff(recall, prepend=recall.new_zeros(1))
        out.append((recall_steps * precision).sum())
    return torch.stack(out)


def segmentation_scores(maps: torch.Tensor, masks: torch.Tensor, ap: bool = True) -> dict[str, torch.Tensor]:
    """Chefer et al.'s ImageNet-segmentation protocol, per image: the upsampled map is min-max
    normalised and binarised at its mean; returns ``pixel_accuracy``, ``miou`` (mean of foreground
    and background IoU) and ``ap`` (average precision of the normalised map for the foreground),
    each ``(B,)`` (``ap=False`` skips the average precision, the costly part). Per image on
    purpose; ``vitflow.metrics.protocol`` has their code's dataset-summed version."""
    big, truth = _prepare(maps, masks)
    unit = minmax(big)
    predicted = unit > unit.mean(dim=1, keepdim=True)
    accuracy = (predicted == truth).double().mean(dim=1)
    ious = []
    for pred, true in ((predicted, truth), (~predicted, ~truth)):
        union = (pred | true).sum(dim=1).double()
        inter = (pred & true).sum(dim=1).double()
        ious.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)))
    scores = {"pixel_accuracy": accuracy, "miou": (ious[0] + ious[1]) / 2}
    if ap:
        scores["ap"] = average_precision(unit, truth)
    return scores


# -- the registry: what `vitflow evaluate --metrics` offers ------------------------------------


@register_metric("pointing_game", higher_is_better=True, needs_mask=True, per_block=True)
def _pointing_game(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Whether the map's maximum lies on the object."""
    return pointing_game(maps, context.object_masks).double()


@register_metric("energy", higher_is_better=True, needs_mask=True, per_block=True)
def _energy(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Share of the map's mass on the object (energy-based pointing game)."""
    return energy_pointing_game(maps, context.object_masks).double()


@register_metric("pixel_accuracy", higher_is_better=True, needs_mask=True, per_block=True)
def _pixel_accuracy(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Pixel accuracy of the map binarised at its mean (Chefer et al.'s segmentation test)."""
    return segmentation_scores(maps, context.object_masks, ap=False)["pixel_accuracy"]


@register_metric("miou", higher_is_better=True, needs_mask=True, per_block=True)
def _miou(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Mean of foreground and background IoU of the binarised map."""
    return segmentation_scores(maps, context.object_masks, ap=False)["miou"]


@register_metric("ap", higher_is_better=True, needs_mask=True, per_block=True)
def _ap(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Average precision of the normalised map for the object's pixels."""
    return segmentation_scores(maps, context.object_masks)["ap"]
