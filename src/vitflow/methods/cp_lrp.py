"""CP-LRP's backward pass for ViTs, by hooks (Achtibat et al., "AttnLRP", ICML 2024; Ali et al.
2022): the forward pass is the model's own, only its backward is changed.

- **Attention**: no gradient through the softmax: the query and key are detached, so relevance
  flows through the values alone (the attention weights are constants, as in DAAM).
- **LayerNorm**: the standard deviation is detached (the identity rule on normalisation).
- **GELU**: the identity rule ``x * stop_grad(f(x) / x)``: the gradient is ``f(x) / x``.
- **Linear layers**, optionally (``gamma > 0``): the generalised gamma rule (Montavon et al.
  2019; Andéol et al. 2021) as zennit's ``Gamma`` computes it and lxt applies it to ViTs, in the
  gradient x input framework: relevance ``R = g * z`` at the output is shared out with the
  weights' like-signed parts scaled by ``1 + gamma`` and handed back as ``R_in / x``. Off by
  default (``gamma=0`` is the plain rule, the model's own gradient).

Reaches timm's ``Attention`` (q_norm, k_norm) and ``nn.MultiheadAttention`` (torchvision,
open_clip); other attention modules refuse. The methods that use it are in
``vitflow.methods.lrp``; the shared DAAM pass under it is ``MethodInputs.daam_lrp``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vitflow.adapters import Adapter

#: the identity rule's stabiliser, as lxt's ``identity_rule_implicit``
EPSILON = 1e-10


class _IdentityRule(torch.autograd.Function):
    """Returns ``out = f(x)`` unchanged; its gradient with respect to ``x`` is ``f(x) / (x + eps)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(out / (x + EPSILON))
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


#: zennit's default stabilisers: of the gamma rule's denominators, and of the input it divides by
GAMMA_STABILIZER, INPUT_STABILIZER = 1e-6, 1e-10


def _stabilize(values: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``values`` moved ``epsilon`` away from zero, zero counting as positive (zennit's ``stabilize``)."""
    return values + torch.where(values >= 0, epsilon, -epsilon)


class _GammaRule(torch.autograd.Function):
    """Returns a linear layer's output unchanged; its backward is the generalised gamma rule.

    With ``x+ = max(x, 0)``, ``x- = min(x, 0)``, ``W^ = W + gamma * max(W, 0)``,
    ``Wv = W + gamma * min(W, 0)`` (the bias alike): an output ``z > 0`` shares its relevance in
    proportion to ``x+ W^ + x- Wv`` (with ``b^``), an output ``z < 0`` to ``x+ Wv + x- W^`` (with
    ``bv``)."""

    @staticmethod
    def forward(ctx, x, out, weight, bias, gamma: float):  # type: ignore[override]
        ctx.save_for_backward(x, out, weight, bias)
        ctx.gamma = gamma
        return out.view_as(out)  # no copy: the layer's output itself, with this backward

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        # zennit forms four modified layers forward and back (8 products); with P = x+ W+ + x- W-
        # and x W = P + (x+ W- + x- W+), the same sums take 5: the rising denominator is
        # z + gamma (P + b+), the falling one z + gamma (x W - P + b-), and the relevance handed
        # back is x+ (A + gamma B) + x- ((1 + gamma) A - gamma B), A = (s^ + sv) W, B = s^ W+ + sv W-
        x, out, weight, bias = ctx.saved_tensors
        gamma = ctx.gamma
        plus, minus = weight.clamp(min=0), weight.clamp(max=0)
        positive, negative = x.clamp(min=0), x.clamp(max=0)
        like = nn.functional.linear(positive, plus) + nn.functional.linear(negative, minus)  # P
        product = out if bias is None else out - bias  # x W
        rising = out + gamma * (like if bias is None else like + bias.clamp(min=0))
        falling = out + gamma * ((product - like) if bias is None else product - like + bias.clamp(max=0))
        del like, product
        relevance = grad * out
        zero = relevance.new_zeros(())
        to_rising = torch.where(out > 0, relevance / _stabilize(rising, GAMMA_STABILIZER), zero)
        to_falling = torch.where(out < 0, relevance / _stabilize(falling, GAMMA_STABILIZER), zero)
        del rising, falling, relevance
        both = (to_rising + to_falling) @ weight  # A
        signed = to_rising @ plus + to_falling @ minus  # B
        shared = positive * (both + gamma * signed) + negative * ((1 + gamma) * both - gamma * signed)
        return shared / _stabilize(x, INPUT_STABILIZER), None, None, None, None


def _gamma_rule(gamma: float):
    def hook(module: nn.Linear, args: tuple, out: torch.Tensor) -> torch.Tensor:
        bias = None if module.bias is None else module.bias.detach()
        return _GammaRule.apply(args[0], out.detach(), module.weight.detach(), bias, gamma)

    return hook


def _layer_norm(module: nn.LayerNorm, args: tuple, _out: torch.Tensor) -> torch.Tensor:
    x = args[0]
    mean = x.mean(dim=-1, keepdim=True)
    std = (((x - mean) ** 2).mean(dim=-1, keepdim=True) + module.eps).sqrt()
    y = (x - mean) / std.detach()
    if module.weight is not None:
        y = y * module.weight
    if module.bias is not None:
        y = y + module.bias
    return y


def _identity_rule(_module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return _IdentityRule.apply(args[0], out.detach())


def _detach(_module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out.detach()


def _detach_query_key(_module: nn.Module, args: tuple, kwargs: dict):
    names = ("query", "key", "value")
    given = dict(zip(names, args, strict=False)) | {n: kwargs.pop(n) for n in names if n in kwargs}
    given["query"], given["key"] = given["query"].detach(), given["key"].detach()
    return (given["query"], given["key"], given["value"], *args[3:]), kwargs


def _is_timm_attention(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("qkv", "q_norm", "k_norm", "proj"))


def check_cp_lrp(adapter: Adapter) -> None:
    """Raise, in one line, unless every attention site is one the hooks can make CP-LRP."""
    for site in adapter.sites():
        module = site.module
        if not (_is_timm_attention(module) or isinstance(module, nn.MultiheadAttention)):
            raise NotImplementedError(
                f"{type(adapter.model).__name__}: CP-LRP's hooks reach timm's Attention and "
                f"nn.MultiheadAttention, not {type(module).__name__}"
            )


def supports_cp_lrp(adapter: Adapter) -> bool:
    try:
        check_cp_lrp(adapter)
    except NotImplementedError:
        return False
    return True


@contextmanager
def cp_lrp(adapter: Adapter, gamma: float = 0.0) -> Iterator[None]:
    """Hooks that make every backward pass through ``adapter.model`` CP-LRP's; removed on exit.
    ``gamma > 0``: the gamma rule on every linear layer called as a module (the blocks' MLPs,
    timm's qkv and output projections, the head; ``nn.MultiheadAttention`` uses its projections'
    weights without calling them, so there, as in lxt, the MLPs and the head)."""
    check_cp_lrp(adapter)
    if not gamma >= 0:
        raise ValueError(f"gamma must be 0 (off) or positive, got {gamma}")
    handles = []
    try:
        for module in adapter.model.modules():
            if gamma and isinstance(module, nn.Linear):
                handles.append(module.register_forward_hook(_gamma_rule(gamma)))
            if isinstance(module, nn.LayerNorm):
                handles.append(module.register_forward_hook(_layer_norm))
            elif isinstance(module, nn.GELU):
                handles.append(module.register_forward_hook(_identity_rule))
        for site in adapter.sites():
            module = site.module
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_pre_hook(_detach_query_key, with_kwargs=True))
            else:  # after the LayerNorm hooks (qk-norm models): the query and key leave detached
                for norm in (module.q_norm, module.k_norm):
                    assert isinstance(norm, nn.Module)  # check_cp_lrp: timm's Attention
                    handles.append(norm.register_forward_hook(_detach))
        yield
    finally:
        for handle in handles:
            handle.remove()
