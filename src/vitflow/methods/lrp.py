"""CP-LRP methods for ViTs (the backward pass: ``vitflow.methods.cp_lrp``).

Input x gradient through CP-LRP's backward is a relevance that is conserved block by block.
``attnlrp`` reads it at the tokens entering the first block (the patch tokens' share is the
map); ``daam_lrp`` is DAAM whose channel coefficients come through the same backward.
``attnlrp_gamma_G`` and ``daam_lrp_gamma_G`` add the gamma rule (``gamma = G``) on the linear
layers (lxt's tuning knob, e.g. 0.05-0.25); ``attnlrp`` and ``daam_lrp`` leave it off.

``daam_lrp_guided`` joins ``daam_lrp``'s map with the relevance CP-LRP's backward carries to the
pixels, as Guided Grad-CAM joins Grad-CAM with guided backpropagation (Selvaraju et al. 2017):
``minmax(upsample(daam_lrp)) · minmax(blur(ReLU(x · dY/dx), GUIDED_SIGMA))``. DAAM says which
patches the [class] token read; the pixel relevance, which pixels inside them carry the score.
Both come from one CP-LRP backward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from vitflow.adapters import Adapter, resolve_adapter
from vitflow.core.maps import gaussian_blur, minmax, upsample
from vitflow.explainer.capture import Capture
from vitflow.methods.cp_lrp import cp_lrp, supports_cp_lrp
from vitflow.methods.inputs import MethodInputs
from vitflow.registry import register_method


def attnlrp_relevance(
    model: nn.Module, x: torch.Tensor, target: object = None, adapter: Adapter | None = None,
    gamma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CP-LRP input x gradient: ``(B, N)`` at the tokens entering the first block (summed over
    channels) and ``(B, H, W)`` at the pixels (summed over colour channels); ``gamma``: the gamma
    rule on the linear layers (0: off)."""
    entering: list[torch.Tensor] = []

    def keep(_module, args):
        entering.append(args[0])

    with Capture(model, adapter=adapter) as capture:
        adapter = capture.adapter
        handle = adapter.blocks()[0].register_forward_pre_hook(keep)
        try:
            with cp_lrp(adapter, gamma), capture.open_pass(x, target, input_grad=True) as opened:
                inputs, logits, explained = opened
                score = explained(logits).scores.sum()
                token_grad, input_grad = torch.autograd.grad(score, [entering[0], inputs])
                tokens = (entering[0].detach() * token_grad).sum(-1)
                pixels = (inputs.detach() * input_grad).sum(1)
        finally:
            handle.remove()
    return tokens, pixels


def attnlrp(
    model: nn.Module, x: torch.Tensor, target: object = None, adapter: Adapter | None = None,
    gamma: float = 0.0,
) -> torch.Tensor:
    """``(B, h, w)`` the patch tokens' CP-LRP relevance (signed); ``gamma``: the gamma rule on the
    linear layers (0: off)."""
    tokens, _ = attnlrp_relevance(model, x, target, adapter, gamma)
    resolved = resolve_adapter(model, adapter)
    prefix, grid = resolved.prefix_tokens(), resolved.grid((x.shape[-2], x.shape[-1]))
    return tokens[:, prefix:].reshape(len(x), *grid)


@register_method("attnlrp", lrp=True)
def _attnlrp(inputs: MethodInputs) -> torch.Tensor:
    """CP-LRP (AttnLRP's ViT recipe): input x gradient at the patch tokens, positive part."""
    return attnlrp(inputs.adapter.model, inputs.x, inputs.target, adapter=inputs.adapter).clamp_min(0)


@register_method(r"attnlrp_gamma_(\d+(?:\.\d+)?)", pattern=True, display="attnlrp_gamma_G", lrp=True)
def _attnlrp_gamma(inputs: MethodInputs, gamma: str) -> torch.Tensor:
    """AttnLRP with the gamma rule on the linear layers, gamma = G (e.g. ``attnlrp_gamma_0.25``)."""
    return attnlrp(inputs.adapter.model, inputs.x, inputs.target, adapter=inputs.adapter,
                   gamma=float(gamma)).clamp_min(0)  # fmt: skip


@register_method("daam_lrp", flow=True, lrp=True)
def _daam_lrp(inputs: MethodInputs) -> torch.Tensor:
    """DAAM with its channel coefficients through the CP-LRP backward pass."""
    return inputs.daam_lrp.maps


@register_method(r"daam_lrp_gamma_(\d+(?:\.\d+)?)", pattern=True, display="daam_lrp_gamma_G", flow=True,
                 lrp=True)  # fmt: skip
def _daam_lrp_gamma(inputs: MethodInputs, gamma: str) -> torch.Tensor:
    """``daam_lrp`` with the gamma rule (gamma = G) on the linear layers of that backward pass."""
    return inputs.daam_lrp_gamma(float(gamma)).maps


#: the smoothing of ``daam_lrp_guided``'s pixel relevance, in input pixels: chosen on the variants
#: study's selection split among 0-4 (``benchmarks/combinations_select.py``): unsmoothed pixels
#: remove the evidence fastest but insert it slowest; 2 px and more keep insertion, lose perturbation
GUIDED_SIGMA = 0.75


def guided(maps: torch.Tensor, pixels: torch.Tensor, sigma: float = GUIDED_SIGMA) -> torch.Tensor:
    """``(B, h, w)`` patch maps and ``(B, H, W)`` signed pixel relevance -> ``(B, H, W)``: the
    maps bilinearly at the pixels times the positive pixel relevance smoothed by ``sigma`` pixels
    (0: not smoothed), each min-max normalised per image."""
    batch, size = len(maps), pixels.shape[-2:]
    positive = pixels.clamp_min(0)[:, None]
    smooth = (gaussian_blur(positive, sigma) if sigma > 0 else positive)[:, 0]
    return (minmax(upsample(maps, size).flatten(1)) * minmax(smooth.flatten(1))).reshape(batch, *size)


@register_method("daam_lrp_guided", lrp=True, input_grad=True)
def _daam_lrp_guided(inputs: MethodInputs) -> torch.Tensor:
    """``daam_lrp``'s map times CP-LRP's pixel relevance (smoothed 0.75 px), as Guided Grad-CAM."""
    result = inputs.daam_lrp  # one CP-LRP backward pass for both: its pixel gradient came with it
    assert result.input_grad is not None  # registered with input_grad: MethodInputs keeps it
    return guided(result.maps[:, -1], (inputs.x.detach() * result.input_grad).sum(1))


__all__ = ["GUIDED_SIGMA", "attnlrp", "attnlrp_relevance", "cp_lrp", "guided", "supports_cp_lrp"]
