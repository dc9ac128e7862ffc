"""DAAM that follows token mixing, and a label-free weighting of the blocks (named variants; the
paper's DAAM stays the default and stays exact).

DAAM assigns token ``j``'s relevance in block ``b``, ``U_b[j]``, to the patch at ``j``'s grid
position. By block ``b`` that token is a mixture: blocks ``1..b-1`` have moved information
between tokens. The mixing-aware variants carry each block's relevance back to the *input*
patches through the mixing of the blocks before it, then accumulate as DAAM does:

    Ũ_b = ReLU(U_b) · M_{b-1},     M_0 = I,     L̃_b = Ũ_b[patches],     L̃_{b,DAAM} = Σ_{i≤b} L̃_i

``M_{b-1}[j, p]`` is how much token ``j`` at the input of block ``b`` draws from input token
``p`` (rows sum to one, so the mapping moves relevance without creating any). Block 1 is plain
DAAM (``M_0 = I``). Two choices of ``M``:

- ``daam_rollout``: attention rollout with the residual connection (Abnar & Zuidema 2020):
  ``M_b = norm(0.5 Ā_b + 0.5 I) · M_{b-1}``, ``Ā_b`` the head-averaged attention.
- ``daam_generic``: the gradient-weighted propagation of Chefer et al.'s generic attention
  (ICCV 2021), ``R_b = R_{b-1} + mean_h ReLU(∇A_b ⊙ A_b) · R_{b-1}``, rows normalised.

Both read the attention trace (one forward and one backward pass, shared with every attention
baseline) and DAAM's own pass for ``U_b``; they need the N x N matrices, so they are not defined
for class-attention models.

``daam_lrp_x_rollout`` combines the two strongest signals of the per-block curves: DAAM on
CP-LRP's backward pass (``daam_lrp``, whose relevance stays on the token's own patch) and the same
relevance carried to the input patches by rollout mixing, the geometric mean of the two flows
after each block, each min-max normalised: ``F_b = sqrt(minmax(Σ_{i≤b} L_i) · minmax(Σ_{i≤b}
L̃_i))``. A patch scores high only where both agree; the product also concentrates the map.

``daam_concentration`` keeps DAAM's per-block maps but weighs each by how concentrated it is
(one minus its normalised entropy, computed on the map itself: no masks, no labels), after
scaling every block map to unit mass, so diffuse blocks count less.
"""

from __future__ import annotations

import math

import torch

from vitflow.core.daam import minmax_per_map
from vitflow.methods.inputs import MethodInputs
from vitflow.methods.trace import AttentionTrace
from vitflow.registry import register_method


def rollout_mixing(trace: AttentionTrace) -> list[torch.Tensor]:
    """``M_0 .. M_{L-1}``: ``M_{b-1}`` ``(B, N, N)`` maps tokens at the input of block ``b`` to input
    tokens, through residual-aware attention rollout."""
    first = trace.attention[0]
    eye = torch.eye(first.shape[-1], dtype=first.dtype, device=first.device).expand(first.shape[0], -1, -1)
    mixing, current = [eye], eye
    for a in trace.attention[:-1]:
        fused = 0.5 * a.mean(dim=1) + 0.5 * eye
        fused = fused / fused.sum(dim=-1, keepdim=True)
        current = fused @ current
        mixing.append(current)
    return mixing


def generic_mixing(trace: AttentionTrace) -> list[torch.Tensor]:
    """``M_0 .. M_{L-1}`` through Chefer et al.'s gradient-weighted propagation, rows normalised."""
    first = trace.attention[0]
    eye = torch.eye(first.shape[-1], dtype=first.dtype, device=first.device).expand(first.shape[0], -1, -1)
    mixing, relevance = [eye], eye
    for a, grad in zip(trace.attention[:-1], trace.attention_grad[:-1], strict=True):
        relevance = relevance + (grad * a).clamp_min(0).mean(dim=1) @ relevance
        mixing.append(relevance / relevance.sum(dim=-1, keepdim=True).clamp_min(1e-30))
    return mixing


def mixed_block_maps(
    relevance: torch.Tensor, mixing: list[torch.Tensor], prefix_tokens: int, grid: tuple[int, int]
) -> torch.Tensor:
    """``(B, L, N)`` DAAM token relevance and ``M_0 .. M_{L-1}`` -> ``(B, L, h, w)`` per-block maps
    on the input patches: ``L̃_b = (ReLU(U_b) · M_{b-1})[patches]``."""
    maps = []
    for b, m in enumerate(mixing):
        carried = torch.einsum("bj,bjp->bp", relevance[:, b].clamp_min(0).to(m.dtype), m)
        maps.append(carried[:, prefix_tokens:].reshape(relevance.shape[0], *grid))
    return torch.stack(maps, dim=1)


def concentration_weights(block_maps: torch.Tensor) -> torch.Tensor:
    """``(B, L)``: one minus the normalised entropy of each block map (0 for a uniform or empty map,
    1 for a single patch)."""
    flat = block_maps.flatten(2).clamp_min(0)
    mass = flat.sum(dim=-1, keepdim=True)
    p = flat / mass.clamp_min(1e-30)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(dim=-1) / math.log(flat.shape[-1])
    return torch.where(mass[..., 0] > 0, 1 - entropy, torch.zeros_like(entropy))


def concentration_weighted(block_maps: torch.Tensor) -> torch.Tensor:
    """``(B, L, h, w)`` accumulated maps: ``Σ_{i≤b} c_i L_i / ΣL_i`` with ``c_i`` the concentration."""
    mass = block_maps.flatten(2).sum(dim=-1).clamp_min(1e-30)[..., None, None]
    weights = concentration_weights(block_maps)[..., None, None]
    return (weights * block_maps / mass).cumsum(dim=1)


def _trace_geometry(inputs: MethodInputs) -> tuple[int, tuple[int, int]]:
    return inputs.trace.prefix_tokens, inputs.trace.grid


@register_method("daam_rollout", full_attention=True, flow=True)
def daam_rollout(inputs: MethodInputs) -> torch.Tensor:
    """Mixing-aware DAAM: each block's relevance carried to the input patches by attention rollout."""
    prefix, grid = _trace_geometry(inputs)
    return mixed_block_maps(inputs.daam.relevance, rollout_mixing(inputs.trace), prefix, grid).cumsum(dim=1)


@register_method("daam_generic", full_attention=True, flow=True)
def daam_generic(inputs: MethodInputs) -> torch.Tensor:
    """Mixing-aware DAAM: each block's relevance carried by generic attention's propagation."""
    prefix, grid = _trace_geometry(inputs)
    return mixed_block_maps(inputs.daam.relevance, generic_mixing(inputs.trace), prefix, grid).cumsum(dim=1)


@register_method("daam_concentration", flow=True)
def daam_concentration(inputs: MethodInputs) -> torch.Tensor:
    """DAAM with each block map weighted by its own concentration (label-free)."""
    return concentration_weighted(inputs.daam.block_maps)


def geometric_mean_flows(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``(B, L, h, w)`` x 2 -> ``sqrt(minmax(first) · minmax(second))``, each map normalised alone."""
    return (minmax_per_map(first) * minmax_per_map(second)).sqrt()


@register_method("daam_lrp_x_rollout", full_attention=True, flow=True, lrp=True)
def daam_lrp_x_rollout(inputs: MethodInputs) -> torch.Tensor:
    """DAAM on CP-LRP's backward, agreed with its own relevance carried by rollout mixing."""
    return _agreed_with_rollout(inputs, inputs.daam_lrp)


@register_method(r"daam_lrp_gamma_(\d+(?:\.\d+)?)_x_rollout", pattern=True,
                 display="daam_lrp_gamma_G_x_rollout", full_attention=True, flow=True, lrp=True)  # fmt: skip
def daam_lrp_gamma_x_rollout(inputs: MethodInputs, gamma: str) -> torch.Tensor:
    """The same on CP-LRP's backward with the gamma rule (gamma = G) on the linear layers."""
    return _agreed_with_rollout(inputs, inputs.daam_lrp_gamma(float(gamma)))


def _agreed_with_rollout(inputs: MethodInputs, result) -> torch.Tensor:
    """A DAAM result's flow, agreed (geometric mean) with its own relevance carried by rollout."""
    prefix, grid = _trace_geometry(inputs)
    carried = mixed_block_maps(result.relevance, rollout_mixing(inputs.trace), prefix, grid).cumsum(dim=1)
    return geometric_mean_flows(result.maps, carried)
