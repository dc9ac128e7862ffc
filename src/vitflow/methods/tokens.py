"""What each block does to each token, for the token-aware DAAM variants and the TokenTM-style
baseline: the residual stream entering every block and each token's value as the block adds it.

For block ``b`` with input tokens ``x_j`` (the residual stream, ``(B, N, C)``) and values ``v_j``
(heads concatenated), ``t_j = W_o v_j`` is what token ``j`` writes into the residual stream
through attention, per unit of attention weight (``W_o`` the output projection, no bias).

- ``outlier_weights`` (isolated tokens, after Darcet et al., ICLR 2024, "Vision Transformers Need
  Registers"): a patch token whose norm ``‖x_j‖`` lies far above the block's typical norm is an
  artifact that carries global information, not its patch. With ``m`` the median and ``s`` the
  median absolute deviation of the patch tokens' norms, the threshold is ``τ = m + κ · 1.4826 s``
  and ``w_j = min(1, τ / ‖x_j‖)``: ordinary tokens keep their relevance, an outlier's shrinks in
  proportion to its excess norm.
- ``transformation_weights`` (after Wu et al., CVPR 2024, "Token Transformation Matters"): how
  each token is transformed, norm ratio times cosine, ``w_j = ‖t_j‖ / ‖x_j‖ · max(0, cos(t_j,
  x_j))``, divided by its mean over the patch tokens (so each block keeps its scale).

Both are computed over patch tokens only (prefix tokens are given weight 1; DAAM drops them).
One forward pass, without the backward, reads what they need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitflow.adapters import Adapter
from vitflow.explainer.capture import Capture, present

#: the isolated-token threshold, in robust standard deviations above the median norm
OUTLIER_KAPPA = 3.0


@dataclass(frozen=True)
class TokenStates:
    """Per block: ``inputs`` ``(B, N, C)`` the residual stream entering it; ``written`` ``(B, N, C)``
    ``W_o v_j``, or ``None`` where the model's output projection is not one linear map."""

    inputs: list[torch.Tensor]
    written: list[torch.Tensor] | None


def _batch_first(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B, N, C)`` from a block input that may be sequence-first (``(N, B, C)``, older open_clip)."""
    return x.transpose(0, 1) if x.shape[0] != batch and x.shape[1] == batch else x


def token_states(adapter: Adapter, x: torch.Tensor, target: object = None) -> TokenStates:
    """One forward pass of ``x`` reading every block's input and its tokens' written values."""
    inputs: list[torch.Tensor] = []

    def keep(_module, args, kwargs):
        given = args[0] if args else kwargs.get("hidden_states", kwargs.get("q_x"))
        inputs.append(_batch_first(given.detach(), x.shape[0]))

    with Capture(adapter.model, adapter=adapter) as capture:
        blocks = capture.adapter.blocks()
        handles = [block.register_forward_pre_hook(keep, with_kwargs=True) for block in blocks]
        try:
            with capture.open_pass(x, target), torch.no_grad():
                values = present([r.v for r in capture.records], "values")
        finally:
            for handle in handles:
                handle.remove()
        projections = [site.output_projection() for site in capture.adapter.sites()]
    for index, (entering, v) in enumerate(zip(inputs, values, strict=True)):
        if entering.shape[:2] != (v.shape[0], v.shape[2]):
            raise ValueError(
                f"{type(adapter.model).__name__}: block {index} receives {tuple(entering.shape)} but "
                f"attends to {v.shape[2]} tokens; token states need self-attention blocks"
            )
    written: list[torch.Tensor] | None = []
    with torch.no_grad():
        for v, proj in zip(values, projections, strict=True):
            batch, heads, tokens, head_dim = v.shape  # "b h n d"
            joined = v.permute(0, 2, 1, 3).reshape(batch, tokens, heads * head_dim)
            if proj is None or proj.in_features != joined.shape[-1]:
                written = None
                break
            assert written is not None
            written.append(joined.to(proj.weight.dtype) @ proj.weight.T)
    return TokenStates(inputs=inputs, written=written)


def outlier_weights(inputs: torch.Tensor, prefix_tokens: int, kappa: float = OUTLIER_KAPPA) -> torch.Tensor:
    """``(B, N, C)`` block input -> ``(B, N)`` ``w_j = min(1, τ / ‖x_j‖)`` (prefix tokens 1)."""
    norms = inputs.double().norm(dim=-1)  # b n
    patches = norms[:, prefix_tokens:]
    median = patches.median(dim=-1, keepdim=True).values
    spread = (patches - median).abs().median(dim=-1, keepdim=True).values
    threshold = median + kappa * 1.4826 * spread
    weights = (threshold / norms.clamp_min(1e-30)).clamp(max=1.0)
    weights[:, :prefix_tokens] = 1.0
    return weights


def transformation_weights(inputs: torch.Tensor, written: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """``(B, N, C)`` block input and written values -> ``(B, N)`` norm ratio x positive cosine,
    divided by its mean over the patch tokens (prefix tokens 1)."""
    x, t = inputs.double(), written.double()
    x_norm, t_norm = x.norm(dim=-1).clamp_min(1e-30), t.norm(dim=-1).clamp_min(1e-30)
    cosine = (x * t).sum(dim=-1) / (x_norm * t_norm)
    weights = t_norm / x_norm * cosine.clamp_min(0)
    mean = weights[:, prefix_tokens:].mean(dim=-1, keepdim=True)
    weights = weights / mean.clamp_min(1e-30)
    weights[:, :prefix_tokens] = 1.0
    return weights
