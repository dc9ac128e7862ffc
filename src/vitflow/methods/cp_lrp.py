"""CP-LRP's backward pass for ViTs, by hooks (Achtibat et al., "AttnLRP", ICML 2024; Ali et al.
2022): the forward pass is the model's own, only its backward is changed.

- **Attention**: no gradient through the softmax: the query and key are detached, so relevance
  flows through the values alone (the attention weights are constants, as in DAAM).
- **LayerNorm**: the standard deviation is detached (the identity rule on normalisation).
- **GELU**: the identity rule ``x * stop_grad(f(x) / x)``: the gradient is ``f(x) / x``.

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
def cp_lrp(adapter: Adapter) -> Iterator[None]:
    """Hooks that make every backward pass through ``adapter.model`` CP-LRP's; removed on exit."""
    check_cp_lrp(adapter)
    handles = []
    try:
        for module in adapter.model.modules():
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
