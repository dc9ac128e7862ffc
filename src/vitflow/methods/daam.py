"""DAAM and its variants as registered methods: all read one DAAM pass and differ only in how
the same per-block maps are accumulated. Those registered with ``flow=True`` return their
attention flow ``(B, L, h, w)`` (the map after every block; the method's map is the last)."""

from __future__ import annotations

import torch

from vitflow.core.daam import accumulate
from vitflow.methods.inputs import MethodInputs
from vitflow.registry import register_method


@register_method("daam", flow=True)
def daam(inputs: MethodInputs) -> torch.Tensor:
    """DAAM, the paper's method: per-block maps accumulated from the first block to the last."""
    return inputs.daam.maps


@register_method("daam_last_block")
def daam_last_block(inputs: MethodInputs) -> torch.Tensor:
    """DAAM's map of the last block alone (no accumulation)."""
    return inputs.daam.block_maps[:, -1]


@register_method("daam_block_norm", flow=True)
def daam_block_norm(inputs: MethodInputs) -> torch.Tensor:
    """DAAM with every block map min-max normalised before accumulating (the published --norm)."""
    return accumulate(inputs.daam.block_maps, normalize_blocks=True)


@register_method(r"daam_from_(\d+)", pattern=True, display="daam_from_K", flow=True)
def daam_from(inputs: MethodInputs, start_block: str) -> torch.Tensor:
    """DAAM accumulated from block K on (1-based)."""
    return accumulate(inputs.daam.block_maps, start_block=int(start_block))
