"""Per-family knowledge of where q, k, v, the [class] attention output and the prefix tokens live.

One module per family behind ``Adapter``; ``resolve_adapter``
picks the first registered adapter that recognises a model.
"""

from __future__ import annotations

from torch import nn

from vitflow.adapters.base import (
    Adapter,
    AttentionSite,
    BlockRecord,
    GridSpec,
    OverrideAdapter,
    ProjectionSite,
    model_identity,
    split_heads,
    unwrap_model,
)
from vitflow.adapters.hf import HFAdapter
from vitflow.adapters.mha import MultiheadAttentionSite
from vitflow.adapters.open_clip import OpenCLIPAdapter, TextClassifier
from vitflow.adapters.timm import TimmAdapter
from vitflow.adapters.torchvision import TorchvisionAdapter

ADAPTERS: list[type[Adapter]] = [TimmAdapter, HFAdapter, TorchvisionAdapter, OpenCLIPAdapter]


def family_names() -> dict[str, type[Adapter]]:
    """Every family name and alias the registry knows, e.g. ``{"timm": TimmAdapter, "hf": HFAdapter}``."""
    names: dict[str, type[Adapter]] = {}
    for cls in ADAPTERS:
        for name in (cls.family, *cls.aliases):
            names.setdefault(name, cls)
    return names


#: starts of class names (in the model libraries) of hierarchical vision transformers: tokens are
#: merged between stages and there is no [class] token, so there is nothing for DAAM to decompose
HIERARCHICAL = (
    "Swin",
    "MaxxVit",
    "Hiera",
    "Twins",
    "PyramidVisionTransformer",
    "MultiScaleVit",
    "DaVit",
    "FocalNet",
    "GlobalContextVit",
    "Nest",
    "TinyVit",
    "EfficientVit",
    "Levit",
)


def hierarchical_reason(model: nn.Module) -> str | None:
    """A one-line refusal for a hierarchical model, or ``None``."""
    name, module = type(model).__name__, type(model).__module__
    library = module.split(".")[0] in {cls.library for cls in ADAPTERS if cls.library}
    if library and any(name.lower().startswith(h.lower()) for h in HIERARCHICAL):
        return (
            f"{name} is a hierarchical vision transformer without a [class] token (tokens are merged "
            "between stages); DAAM explains [class]-token ViTs: see `vitflow models`"
        )
    return None


def register_adapter(adapter: type[Adapter]) -> type[Adapter]:
    """Add an adapter class to the registry (usable as a decorator); later ones are tried first."""
    ADAPTERS.insert(0, adapter)
    return adapter


def resolve_adapter(
    model: nn.Module,
    adapter: Adapter | type[Adapter] | None = None,
    prefix_tokens: int | None = None,
    grid: GridSpec | None = None,
) -> Adapter:
    """The adapter for ``model``: the one given, else the first registered one that matches.
    Compiled and data-parallel wrappers are looked through (``unwrap_model``)."""
    model = unwrap_model(model)
    if adapter is None:
        reason = hierarchical_reason(model)
        if reason is not None:
            raise ValueError(reason)
    if isinstance(adapter, Adapter):
        resolved = adapter
    elif adapter is not None:
        resolved = adapter(model)
    else:
        found = next((cls for cls in ADAPTERS if cls.matches(model)), None)
        if found is None:
            families = ", ".join(cls.family for cls in ADAPTERS)
            where = f"{type(model).__module__}.{type(model).__name__}"
            if not _has_attention(model):
                raise TypeError(
                    f"{where} is not a Vision Transformer (it has no attention layers); DAAM explains "
                    "ViTs with a [class] token: see `vitflow models`"
                )
            raise TypeError(
                f"vitflow does not recognise {type(model).__module__}.{type(model).__name__} "
                f"(supported families: {families}); pass adapter=YourAdapter (README, 'Custom ViTs')"
            )
        resolved = found(model)
    if prefix_tokens is not None or grid is not None:
        resolved = OverrideAdapter(resolved, prefix_tokens, grid)
    return resolved


def _has_attention(model: nn.Module) -> bool:
    """Whether any submodule looks like attention (its class or name says so, or it is
    ``nn.MultiheadAttention``): a ResNet or a ConvNeXt has none."""
    for name, module in model.named_modules():
        kind = type(module).__name__.lower()
        if isinstance(module, nn.MultiheadAttention) or "attention" in kind or "attn" in kind:
            return True
        if name.rsplit(".", 1)[-1].lower() in ("attn", "attention", "self_attn", "self_attention"):
            return True
    return False


__all__ = [
    "ADAPTERS",
    "HIERARCHICAL",
    "family_names",
    "hierarchical_reason",
    "model_identity",
    "Adapter",
    "AttentionSite",
    "BlockRecord",
    "GridSpec",
    "HFAdapter",
    "MultiheadAttentionSite",
    "OpenCLIPAdapter",
    "OverrideAdapter",
    "ProjectionSite",
    "TextClassifier",
    "TimmAdapter",
    "TorchvisionAdapter",
    "split_heads",
    "unwrap_model",
    "register_adapter",
    "resolve_adapter",
]
