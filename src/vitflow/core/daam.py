"""DAAM as pure tensor math (method.md sections 1-4).

No hooks, no I/O, no knowledge of model families. Dimension names used in shapes:
``B`` images, ``H`` heads, ``N`` tokens (prefix + patches), ``d`` head size, ``C = H*d`` width,
``L`` blocks, ``h x w`` patch grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from vitflow.core.maps import minmax

Rho = Literal["relu", "identity"]


def class_attention_row(q_cls: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The [class] row of every head's attention matrix, without forming the N x N matrix.

    Args:
        q_cls: ``(B, H, d)`` the [class] token's query (after any q-norm / rotation).
        k: ``(B, H, N, d)`` all keys (after any k-norm / rotation).
        scale: the softmax temperature the model uses (usually ``d ** -0.5``).

    Returns:
        ``(B, H, N)`` ``a[b, h, j] = softmax_j(q_cls . k_j * scale)``; O(N*C) work.
    """
    logits = torch.einsum("bhd,bhnd->bhn", q_cls, k) * scale
    return logits.softmax(dim=-1)


def token_contributions(attn_row: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Split the [class] token's attention output into one additive part per token (section 1).

    Args:
        attn_row: ``(B, H, N)`` from ``class_attention_row``.
        v: ``(B, H, N, d)`` values.

    Returns:
        ``(B, N, C)`` ``S[b, j, c] = a[b, h(c), j] * v[b, h(c), j, c mod d]``; channels ordered head
        by head, as the model concatenates them before its output projection.
    """
    s = attn_row.unsqueeze(-1) * v  # b h n d
    batch, heads, tokens, head_dim = s.shape
    return s.permute(0, 2, 1, 3).reshape(batch, tokens, heads * head_dim)


def class_token_output(attn_row: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``T = sum_j S[j]``: the [class] row of the attention output, ``(B, C)``.

    Equal to the model's own [class] attention output when the capture is right; this is the
    decomposition identity the engine checks at run time.
    """
    out = torch.einsum("bhn,bhnd->bhd", attn_row, v)
    return out.reshape(out.shape[0], -1)


def apply_rho(coefficients: torch.Tensor, rho: Rho) -> torch.Tensor:
    """The channel-coefficient transform of section 3: ReLU (supervised) or identity (SSL)."""
    if rho == "relu":
        return coefficients.clamp_min(0)
    if rho == "identity":
        return coefficients
    raise ValueError(f"rho must be 'relu' or 'identity', got {rho!r}")


def token_relevance(
    attn_row: torch.Tensor, v: torch.Tensor, coefficients: torch.Tensor, rho: Rho = "relu"
) -> torch.Tensor:
    """``U[j] = sum_c rho(C[c]) S[j, c] = sum_h a^h[j] <rho(C^h), v^h[j]>`` for all N tokens.

    Args:
        attn_row: ``(B, H, N)``.
        v: ``(B, H, N, d)``.
        coefficients: ``(B, C)`` channel importance ``dY / dT``.
        rho: coefficient transform.

    Returns:
        ``(B, N)`` token relevance, prefix tokens included.
    """
    batch, heads, _, head_dim = v.shape
    weights = apply_rho(coefficients, rho).reshape(batch, heads, head_dim)
    value_scores = torch.einsum("bhnd,bhd->bhn", v, weights)
    return (attn_row * value_scores).sum(dim=1)


def token_relevance_all_blocks(
    attn_rows: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    coefficients: Sequence[torch.Tensor],
    rho: Rho = "relu",
) -> torch.Tensor:
    """``token_relevance`` of every block at once, ``(B, L, N)``: one contraction per block (it
    reads that block's values) and the rest as single operations over the stacked blocks, so a
    call costs a few kernels instead of a few per block (what a short GPU step cannot hide).

    Args:
        attn_rows: per block ``(B, H, N)``; values: per block ``(B, H, N, d)``; coefficients: per
            block ``(B, C)``. Every block has the same shapes.
    """
    rows = torch.stack(list(attn_rows))  # l b h n
    weights = apply_rho(torch.stack(list(coefficients)).to(rows.dtype), rho)  # l b c
    blocks, batch, heads, _ = rows.shape
    weights = weights.reshape(blocks, batch, heads, -1)
    scores = torch.stack(
        [torch.einsum("bhnd,bhd->bhn", v.to(rows.dtype), w) for v, w in zip(values, weights, strict=True)]
    )
    return (rows * scores).sum(dim=2).transpose(0, 1)


def class_token_outputs(attn_rows: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> torch.Tensor:
    """``class_token_output`` of every block, stacked: ``(L, B, C)``."""
    return torch.stack([class_token_output(a, v.to(a.dtype)) for a, v in zip(attn_rows, values, strict=True)])


def block_map(relevance: torch.Tensor, prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """``L_b = ReLU(U[patch tokens])`` on the patch grid.

    Args:
        relevance: ``(..., N)`` token relevance.
        prefix_tokens: number of leading non-patch tokens (class, distillation, registers).
        grid: ``(h, w)`` with ``h * w == N - prefix_tokens``.

    Returns:
        ``(..., h, w)``.
    """
    patches = relevance[..., prefix_tokens:]
    h, w = grid
    if patches.shape[-1] != h * w:
        raise ValueError(
            f"{patches.shape[-1]} patch tokens do not fill a {h}x{w} grid "
            f"({relevance.shape[-1]} tokens, {prefix_tokens} prefix tokens); "
            "pass the right prefix_tokens= / grid= to DAAM"
        )
    return patches.clamp_min(0).reshape(*patches.shape[:-1], h, w)


def minmax_per_map(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each ``(h, w)`` map of ``(..., h, w)`` to [0, 1]; a constant map becomes 0."""
    return minmax(maps.flatten(-2)).reshape(maps.shape)


def accumulate(
    block_maps: torch.Tensor, normalize_blocks: bool = False, start_block: int = 1
) -> torch.Tensor:
    """The attention flow: ``L_{b,DAAM} = sum_{i<=b} L_i`` along dim 1 of ``(B, L, h, w)``.

    With ``normalize_blocks`` each ``L_i`` is min-max normalised per image first (the published
    ``--norm`` option). ``start_block`` (1-based) leaves the blocks before it out of the sum (a
    variant: early blocks of some models add diffuse evidence); the maps before it are zero.
    """
    if not 1 <= start_block <= block_maps.shape[1]:
        raise ValueError(f"start_block must be between 1 and {block_maps.shape[1]}, got {start_block}")
    if normalize_blocks:
        block_maps = minmax_per_map(block_maps)
    if start_block > 1:
        block_maps = block_maps.clone()
        block_maps[:, : start_block - 1] = 0
    return block_maps.cumsum(dim=1)
