"""DAAM with each token's relevance weighted by what its block does to it, and a TokenTM-style
baseline (the weights: ``vitflow.methods.tokens``). Named variants; the paper's DAAM stays the
default and stays exact.

- ``daam_isolated``: ``L_b = ReLU(w_b ⊙ U_b)[patches]`` with ``w_b`` the isolated-token weights
  (high-norm outlier tokens shrunk to the threshold norm), accumulated as DAAM does; an option
  for DINOv2-like backbones, whose early blocks' maps peak on a few artifact tokens.
- ``daam_transform``: the same with the token-transformation weights (norm ratio x cosine).
- ``tokentm``: generic attention's propagation (Chefer et al. 2021) with every attention column
  ``j`` weighted by token ``j``'s transformation weight, after TokenTM (Wu et al., CVPR 2024). Built
  from the paper's description, not its code (none is published), so it is "TokenTM-style".

All three need every block's input to be the tokens its attention attends to, so they are not
defined for class-attention models (CaiT), as the methods that propagate attention are not.
"""

from __future__ import annotations

import torch

from vitflow.core.daam import block_map
from vitflow.methods.attention import generic_attention
from vitflow.methods.inputs import MethodInputs
from vitflow.methods.tokens import OUTLIER_KAPPA, outlier_weights, transformation_weights
from vitflow.registry import register_method


def weighted_flow(
    relevance: torch.Tensor, weights: torch.Tensor, prefix_tokens: int, grid: tuple[int, int]
) -> torch.Tensor:
    """``(B, L, N)`` DAAM token relevance and ``(B, L, N)`` token weights -> ``(B, L, h, w)`` the
    accumulated maps ``Σ_{i≤b} ReLU(w_i ⊙ U_i)[patches]``."""
    return block_map(relevance * weights.to(relevance.dtype), prefix_tokens, grid).cumsum(dim=1)


def _written(inputs: MethodInputs) -> list[torch.Tensor]:
    written = inputs.tokens.written
    if written is None:
        raise ValueError(
            f"{type(inputs.adapter.model).__name__}: the output projection is not one linear map, so "
            "what each token writes into the residual stream is not defined; use daam_isolated instead"
        )
    return written


@register_method("daam_isolated", flow=True, full_attention=True)
def daam_isolated(inputs: MethodInputs, kappa: float = OUTLIER_KAPPA) -> torch.Tensor:
    """DAAM with high-norm (isolated, artifact) tokens' relevance shrunk to the threshold norm."""
    prefix = inputs.daam.prefix_tokens
    weights = torch.stack([outlier_weights(x, prefix, kappa) for x in inputs.tokens.inputs], dim=1)
    return weighted_flow(inputs.daam.relevance, weights, prefix, inputs.daam.grid)


@register_method("daam_transform", flow=True, full_attention=True, token_transform=True)
def daam_transform(inputs: MethodInputs) -> torch.Tensor:
    """DAAM with each token's relevance weighted by its transformation (norm ratio x cosine)."""
    prefix = inputs.daam.prefix_tokens
    pairs = zip(inputs.tokens.inputs, _written(inputs), strict=True)
    weights = torch.stack([transformation_weights(x, t, prefix) for x, t in pairs], dim=1)
    return weighted_flow(inputs.daam.relevance, weights, prefix, inputs.daam.grid)


@register_method("tokentm", full_attention=True, token_transform=True)
def tokentm(inputs: MethodInputs) -> torch.Tensor:
    """TokenTM-style: generic attention with attention weighted by token transformation."""
    prefix = inputs.trace.prefix_tokens
    pairs = zip(inputs.tokens.inputs, _written(inputs), strict=True)
    return generic_attention(inputs.trace, [transformation_weights(x, t, prefix) for x, t in pairs])
