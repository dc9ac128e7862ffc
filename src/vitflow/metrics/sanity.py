"""Model-randomisation sanity check (Adebayo et al. 2018): an explanation that does not change
when the model's weights are destroyed does not explain the model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dimension (ties broken by position), as float64."""
    return values.argsort(dim=-1).argsort(dim=-1).double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row of ``(B, ...)`` tensors, ``(B,)``."""
    ra, rb = _ranks(a.flatten(1)), _ranks(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-30)


def cascading_randomization(
    model: nn.Module,
    explain: Callable[[nn.Module], torch.Tensor | dict[str, torch.Tensor]],
    blocks: Callable[[nn.Module], Sequence[nn.Module]],
    seed: int = 0,
    std: float = 0.02,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Rank correlation between the original maps and the maps after re-initialising the top
    ``k`` blocks, ``k = 1..L`` (cumulative, from the last block down).

    Args:
        model: the model (left untouched: a copy is randomised).
        explain: ``explain(model) -> (B, h, w)`` maps of a fixed batch for a fixed target, or a
            dict of such maps (several methods compared on the same randomised models).
        blocks: ``blocks(model) -> [block_1, ..., block_L]`` of a model (e.g. ``lambda m: m.blocks``).
        std: standard deviation of the new normal weights (norm layers get weight 1, bias 0).

    Returns:
        ``(L, B)``: row ``k - 1`` after randomising the top ``k`` blocks; a dict of those when
        ``explain`` returns a dict.
    """
    original = explain(model)
    randomized = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for block in reversed(list(blocks(randomized))):
        with torch.no_grad():
            for name, p in block.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                elif p.ndim == 1:
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)
        maps = explain(randomized)  # outside no_grad: gradient methods need autograd
        if isinstance(original, dict):
            assert isinstance(maps, dict)  # the same explain function
            rows.append({name: spearman(original[name], maps[name]) for name in original})
        else:
            assert isinstance(maps, torch.Tensor)
            rows.append({"": spearman(original, maps)})
    stacked = {name: torch.stack([row[name] for row in rows]) for name in rows[0]} if rows else {}
    return stacked if isinstance(original, dict) else stacked.get("", torch.empty(0))
