"""Baseline explanations of ViTs, batched, from one ``AttentionTrace`` where they need
attention: raw attention, attention rollout, attention Grad-CAM, Chefer et al.'s generic
attention explainability, Grad-CAM on the last block's patch tokens, input x gradient.

Token-level maps are ``(B, h, w)`` on the patch grid; input x gradient is ``(B, H, W)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from vitflow.explainer.capture import Capture
from vitflow.methods.inputs import MethodInputs
from vitflow.methods.trace import AttentionTrace
from vitflow.registry import register_method

HeadFusion = Literal["mean", "max", "min"]


def _patches(row: torch.Tensor, trace: AttentionTrace) -> torch.Tensor:
    """``(B, N)`` relevance of every token -> ``(B, h, w)`` patch map."""
    return row[:, trace.prefix_tokens :].reshape(row.shape[0], *trace.grid)


def _fuse(a: torch.Tensor, fusion: HeadFusion) -> torch.Tensor:
    if fusion == "mean":
        return a.mean(dim=1)
    if fusion == "max":
        return a.amax(dim=1)
    if fusion == "min":
        return a.amin(dim=1)
    raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {fusion!r}")


def raw_attention(trace: AttentionTrace) -> torch.Tensor:
    """The last block's [class] attention row over the patches, averaged over heads."""
    return _patches(trace.attention[-1][:, :, 0].mean(dim=1), trace)


def attention_rollout(
    trace: AttentionTrace, head_fusion: HeadFusion = "mean", residual: bool = True
) -> torch.Tensor:
    """Abnar & Zuidema (2020): multiply the (head-fused) attention of all blocks, each with the
    residual connection modelled as ``0.5 A + 0.5 I`` and rows renormalised; the [class] row."""
    rollout = None
    for a in trace.attention:
        fused = _fuse(a, head_fusion)  # b n n
        if fused.shape[-2] != fused.shape[-1]:
            raise ValueError("attention rollout needs square (self-)attention in every block")
        if residual:
            fused = 0.5 * fused + 0.5 * torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
            fused = fused / fused.sum(dim=-1, keepdim=True)
        rollout = fused if rollout is None else fused @ rollout
    if rollout is None:
        raise ValueError("attention rollout needs at least one attention block")
    return _patches(rollout[:, 0], trace)


def attention_gradcam(trace: AttentionTrace) -> torch.Tensor:
    """Gradient x attention in the last block: ``mean_h ReLU(dY/dA * A)``, the [class] row."""
    a, grad = trace.attention[-1], trace.attention_grad[-1]
    return _patches((grad * a).clamp_min(0).mean(dim=1)[:, 0], trace)


def generic_attention(trace: AttentionTrace, token_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Chefer et al. (ICCV 2021): ``R <- R + mean_h ReLU(dY/dA * A) R`` from ``R = I``; the
    [class] row. ``token_weights``: per block ``(B, N)`` ``w``, each attention column ``j`` weighted
    by ``w_j`` (``mean_h ReLU(dY/dA * A * w_j)``: the TokenTM-style method)."""
    relevance = None
    weights = token_weights if token_weights is not None else [None] * len(trace.attention)
    for a, grad, w in zip(trace.attention, trace.attention_grad, weights, strict=True):
        weighted = grad * a if w is None else grad * a * w[:, None, None, :].to(a.dtype)  # b h n n
        weighted = weighted.clamp_min(0).mean(dim=1)  # b n n
        if relevance is None:
            relevance = torch.eye(weighted.shape[-1], dtype=weighted.dtype, device=weighted.device).expand_as(
                weighted
            )
        relevance = relevance + weighted @ relevance
    if relevance is None:
        raise ValueError("generic attention needs at least one attention block")
    return _patches(relevance[:, 0], trace)


def input_x_gradient(x: torch.Tensor, trace: AttentionTrace) -> torch.Tensor:
    """``sum_c x * dY/dx`` per pixel, ``(B, H, W)`` (needs ``trace_attention(..., input_grad=True)``)."""
    if trace.input_grad is None:
        raise ValueError("input x gradient needs the input gradient: trace_attention(..., input_grad=True)")
    return (x * trace.input_grad).sum(dim=1)


def gradcam_tokens(
    model: nn.Module, x: torch.Tensor, target: object = None, layer: nn.Module | None = None, adapter=None
) -> torch.Tensor:
    """Grad-CAM on a layer's patch tokens, as pytorch-grad-cam does for ViTs: channel weights are
    the spatial mean of the gradient, ``ReLU(sum_c w_c A_c)``. ``layer`` defaults to the
    adapter's Grad-CAM layer (``blocks[-1].norm1`` in timm); ``target`` as for
    ``DAAM``. Returns ``(B, h, w)``."""
    store: dict[str, torch.Tensor] = {}

    def keep(_module, _args, out):
        out = out.detach().requires_grad_(True) if not out.requires_grad else out
        store["activation"] = out
        out.register_hook(lambda grad: store.__setitem__("grad", grad))
        return out

    with Capture(model, adapter=adapter) as capture:
        adapter = capture.adapter
        handle = (layer or adapter.gradcam_layer()).register_forward_hook(keep)
        try:
            with capture.run(x, target):
                pass  # the backward pass fills store["grad"]
        finally:
            handle.remove()
    if "grad" not in store:
        name = type(adapter.model).__name__
        raise ValueError(f"{name}: the Grad-CAM layer does not reach the explained score")
    prefix, grid = adapter.prefix_tokens(), adapter.grid((x.shape[-2], x.shape[-1]))
    activation = adapter.gradcam_tokens(store["activation"].detach())[:, prefix:]  # b n c
    weights = adapter.gradcam_tokens(store["grad"])[:, prefix:].mean(dim=1, keepdim=True)  # b 1 c
    cam = (activation * weights).sum(dim=-1).clamp_min(0)
    return cam.reshape(cam.shape[0], *grid)


# -- the registry: what `vitflow evaluate --methods` offers ------------------------------------


@register_method("raw_attention")
def _raw_attention(inputs: MethodInputs) -> torch.Tensor:
    """The last block's [class] attention to each patch, averaged over heads."""
    return raw_attention(inputs.trace)


@register_method("rollout", full_attention=True)
def _rollout(inputs: MethodInputs) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020), residual-aware."""
    return attention_rollout(inputs.trace)


@register_method("attention_gradcam")
def _attention_gradcam(inputs: MethodInputs) -> torch.Tensor:
    """Gradient x attention of the last block (Chefer et al.'s "GradCAM" row)."""
    return attention_gradcam(inputs.trace)


@register_method("generic_attention", full_attention=True)
def _generic_attention(inputs: MethodInputs) -> torch.Tensor:
    """Chefer et al.'s generic attention explainability (ICCV 2021)."""
    return generic_attention(inputs.trace)


@register_method("gradcam")
def _gradcam(inputs: MethodInputs) -> torch.Tensor:
    """Grad-CAM on the last block's patch tokens (pytorch-grad-cam's ViT recipe)."""
    return gradcam_tokens(inputs.adapter.model, inputs.x, inputs.target, adapter=inputs.adapter)


@register_method("input_x_gradient", input_grad=True)
def _input_x_gradient(inputs: MethodInputs) -> torch.Tensor:
    """Input x gradient, summed over channels, positive part (pixel resolution)."""
    return input_x_gradient(inputs.x, inputs.trace).clamp_min(0)
