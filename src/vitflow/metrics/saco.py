"""SaCo, the salience-guided faithfulness coefficient (Wu et al., "On the Faithfulness of Vision
Transformer Explanations", CVPR 2024).

Perturbation AUCs barely separate methods from random attributions; SaCo asks, pair by pair,
whether the part of the image the map calls more important changes the decision more. The
pixels are ranked by the map (upsampled to the input, most salient first) and cut into ``K``
groups of equal size ``G_1 .. G_K``; ``s(G_i)`` is the map's sum over ``G_i`` and
``d(G_i) = p(y | x) - p(y | x with G_i removed)`` the drop in the explained class's
probability when only that group's pixels are removed (set to ``fill``: 0 = the dataset mean
after normalisation, as in vitflow's perturbation test). Then, over all pairs ``i < j``
(so ``s(G_i) >= s(G_j)``):

    F = sum_{i<j} sign_ij * (s(G_i) - s(G_j)) / sum_{i<j} |s(G_i) - s(G_j)|,
    sign_ij = +1 if d(G_i) >= d(G_j) else -1

``F`` lies in [-1, 1]: 1 when every more salient group matters at least as much, -1 when the
order is reversed throughout, near 0 for a map unrelated to the model. A map that is constant
(every group has the same salience) has no pairs to weigh: its coefficient is NaN, which
``vitflow evaluate`` leaves out of the means.
"""

from __future__ import annotations

import torch

from vitflow.core.maps import upsample
from vitflow.metrics.context import ScoringContext
from vitflow.metrics.faithfulness import Forward, _scores
from vitflow.registry import register_metric

#: the number of groups of the paper's evaluation
GROUPS = 10


def group_bounds(pixels: int, groups: int) -> list[tuple[int, int]]:
    """``groups`` consecutive ``(start, stop)`` slices of ``pixels`` ranked pixels, equal in size
    to one pixel (the first ones get the remainder)."""
    if not 1 <= groups <= pixels:
        raise ValueError(f"groups must be between 1 and the number of pixels {pixels}, got {groups}")
    size, extra = divmod(pixels, groups)
    bounds, start = [], 0
    for g in range(groups):
        stop = start + size + (1 if g < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def coefficient(salience: torch.Tensor, drops: torch.Tensor) -> float:
    """``F`` from the groups' salience ``s`` ``(K,)`` (in rank order, descending) and the drops in
    probability ``d`` ``(K,)`` their removal causes; NaN when all ``s`` are equal."""
    s, d = salience.double(), drops.double()
    i, j = torch.triu_indices(len(s), len(s), offset=1)
    gap = s[i] - s[j]
    total = gap.abs().sum()
    if total == 0:
        return float("nan")
    sign = torch.where(d[i] >= d[j], 1.0, -1.0).double()
    return float((sign * gap).sum() / total)


def saco(
    forward: Forward,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: torch.Tensor,
    groups: int = GROUPS,
    fill: float = 0.0,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """SaCo per image: ``saco`` ``(B,)``, with each image's group salience ``salience`` and
    probability drops ``drops`` ``(B, K)``. ``maps`` ``(B, h, w)`` are upsampled bilinearly to
    ``x``'s size in float64 and ranked with a stable sort (ties keep raster order); the intact
    image and its ``K`` perturbed copies go through ``forward`` together."""
    height, width = x.shape[-2:]
    big = upsample(maps.double(), (height, width)).flatten(1)  # float64: the ranking and sums
    order = big.argsort(dim=1, descending=True, stable=True)
    bounds = group_bounds(height * width, groups)
    values, saliences, drops = [], [], []
    for b in range(len(x)):
        versions = [x[b]]
        salience = []
        for start, stop in bounds:
            chosen = order[b, start:stop]
            keep = torch.ones(height * width, dtype=torch.bool, device=x.device)
            keep[chosen.to(x.device)] = False
            versions.append(torch.where(keep.reshape(1, height, width), x[b], torch.full_like(x[b], fill)))
            salience.append(big[b, chosen].sum())
        probabilities, _ = _scores(forward, torch.stack(versions), int(target[b]), batch_size)
        probabilities = probabilities.double().cpu()
        drop = probabilities[0] - probabilities[1:]
        s = torch.stack(salience).cpu()
        saliences.append(s)
        drops.append(drop)
        values.append(coefficient(s, drop))
    return {
        "saco": torch.tensor(values, dtype=torch.float64),
        "salience": torch.stack(saliences),
        "drops": torch.stack(drops),
    }


@register_metric("saco", higher_is_better=True, needs_mask=False)
def _saco(maps: torch.Tensor, context: ScoringContext) -> torch.Tensor:
    """Salience-guided faithfulness coefficient (Wu et al. 2024): do more salient tenths matter more?"""
    return saco(context.forward, context.x, maps, context.target)["saco"]
