"""Running registered methods: the names, the checks of requested names, every method's maps for
a batch from shared passes, and which methods a model admits. What ``evaluate``, the Chefer
protocol, the sanity check and the app call."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vitflow.adapters import Adapter
from vitflow.methods.inputs import MethodInputs
from vitflow.registry import METHODS, METRICS


def method_names() -> list[str]:
    """Every registered method (``daam_from_K`` is a pattern, accepted but not listed)."""
    return METHODS.names()


def check_names(methods: Sequence[str], metrics: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the known ones for an unknown method or metric."""
    for name in methods:
        METHODS.lookup(name)
    for name in metrics:
        METRICS.lookup(name)


def check_flow_methods(per_block_methods: Sequence[str], methods: Sequence[str]) -> None:
    """Raise ``ValueError`` for a per-block method that makes no attention flow or is not evaluated."""
    for name in per_block_methods:
        if not is_flow_method(name):
            flows = ", ".join(e.info.get("display", e.name) for e in METHODS.entries() if e.info.get("flow"))
            raise ValueError(f"{name!r} has no map after each block; per-block methods are {flows}")
        if name not in methods:
            raise ValueError(f"per-block method {name!r} is not among the evaluated methods; add it to them")


def explain_all(adapter: Adapter, x: torch.Tensor, target: torch.Tensor, methods: Sequence[str]) -> dict:
    """Maps of every method for a batch: ``(B, h, w)`` (or ``(B, H, W)``), plus, for each method
    that makes an attention flow (registered with ``flow=True``: DAAM and its variants),
    ``"<method>/flow"`` ``(B, L, h, w)``, its map after each block; the method's map is the last.
    Methods sharing a pass (the DAAM variants; the attention methods) share one."""
    input_grad = any(METHODS.lookup(m)[0].info.get("input_grad") for m in methods)
    inputs = MethodInputs(adapter, x, target, input_grad=input_grad)
    maps = {}
    for name in methods:
        out = METHODS.call(name, inputs).float()
        if is_flow_method(name):
            maps[f"{name}/flow"] = out
            out = out[:, -1]
        maps[name] = out
    return maps


def is_flow_method(name: str) -> bool:
    """Whether method ``name`` makes an attention flow (a map after every block)."""
    return bool(METHODS.lookup(name)[0].info.get("flow"))


def applicable_methods(adapter: Adapter, methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """The methods that are defined for the adapter's model, and a note on any left out."""
    from vitflow.methods.cp_lrp import supports_cp_lrp

    name = type(adapter.model).__name__
    needs = (  # a method registered with the flag needs what the model may not have
        ("full_attention", adapter.full_attention(),
         f"{name}'s class-attention blocks have no token-to-token attention to propagate"),
        ("lrp", supports_cp_lrp(adapter), f"CP-LRP's hooks do not reach {name}'s attention"),
        ("readout", adapter.has_readout(), f"vitflow cannot read {name}'s output from an intermediate block"),
        ("token_transform", all(site.output_projection() is not None for site in adapter.sites()),
         f"{name}'s attention output reaches the residual stream through more than one linear map"),
    )  # fmt: skip
    kept, notes = list(methods), []
    for flag, available, reason in needs:
        dropped = [] if available else [m for m in kept if METHODS.lookup(m)[0].info.get(flag)]
        kept = [m for m in kept if m not in dropped]
        if dropped:
            notes.append(f"{', '.join(dropped)} left out: {reason}")
    return kept, notes

