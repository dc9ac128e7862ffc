"""The common interface every model family implements, and the per-block record hooks fill.

An adapter knows *where* a family keeps the tensors DAAM needs; it does no method math. For each
attention block it installs hooks that hand the block's ``BlockRecord`` four things:

- the [class] token's query ``(B, H, d)`` and all keys ``(B, H, N, d)`` (after q/k norm, rotation),
- the values ``(B, H, N, d)``,
- the attention output before the output projection ``(B, N, C)``, whose [class] row is ``T_b``.

The record turns query and keys into the [class] attention row at once (the keys are not kept),
and makes the attention output a point where the engine can read ``dY/dT_b`` in the backward
pass.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitflow.core.daam import class_attention_row

#: a module of another library (timm, transformers, torchvision, open_clip) whose attributes an
#: adapter reads by name: torch types them as ``Tensor | Module`` (``nn.Module.__getattr__``), so
#: the adapters declare them as what they are, dynamic
Foreign = Any

GridSpec = tuple[int, int] | Callable[[tuple[int, int]], tuple[int, int]]


class RecordError(RuntimeError):
    """A hook saw something that does not fit one forward pass of one block."""


@dataclass
class BlockRecord:
    """What one forward pass leaves behind for one attention block."""

    index: int
    scale: float
    active: bool = False
    q_cls: torch.Tensor | None = None
    attn_row: torch.Tensor | None = None  # (B, H, N)
    v: torch.Tensor | None = None  # (B, H, N, d)
    output: torch.Tensor | None = None  # (B, N, C), on the autograd path
    coefficients: torch.Tensor | None = None  # (B, C) = dY/dT_b, filled in backward
    # when the hooked output is after the output projection (nn.MultiheadAttention keeps the
    # attention output internal): out = O W^T + b, so dY/dO = dY/dout W and checks compare W O + b
    out_weight: torch.Tensor | None = None
    out_bias: torch.Tensor | None = None
    _k: torch.Tensor | None = field(default=None, repr=False)
    _grad_anchor: torch.Tensor | None = field(default=None, repr=False)

    def clear(self) -> None:
        self.q_cls = self.attn_row = self.v = self.output = self.coefficients = None
        self._k = self._grad_anchor = None

    def query(self, q: torch.Tensor) -> None:
        """``q``: ``(B, H, N, d)``; only the [class] row is kept."""
        if self.active:
            self.q_cls = q[:, :, 0].detach()
            self._maybe_attention_row()

    def key(self, k: torch.Tensor) -> None:
        """``k``: ``(B, H, N, d)``; reduced to the [class] attention row, then dropped."""
        if self.active:
            self._k = k.detach()
            self._maybe_attention_row()

    def value(self, v: torch.Tensor) -> None:
        """``v``: ``(B, H, N, d)``."""
        if self.active:
            if self.v is not None:
                raise RecordError(f"block {self.index} ran twice in one forward pass")
            self.v = v.detach()

    def row_and_values(self, attn_row: torch.Tensor, v: torch.Tensor) -> None:
        """For sites that form the [class] attention row themselves (a position bias or rotation
        the model applies inside its forward): ``attn_row`` ``(B, H, N)``, ``v`` ``(B, H, N, d)``."""
        if self.active:
            if self.attn_row is not None or self.v is not None:
                raise RecordError(f"block {self.index} ran twice in one forward pass")
            self.attn_row, self.v = attn_row.detach(), v.detach()

    def attention_output(self, out: torch.Tensor) -> torch.Tensor:
        """``out``: ``(B, N, C)`` before the output projection. Returns the tensor the model must
        go on with: the same values, made part of the autograd graph when nothing upstream is."""
        if not self.active:
            return out
        if not out.requires_grad:
            # Nothing upstream requires grad (parameters are frozen during the call): adding a
            # zero leaf starts the graph here, so the backward pass stops at this block.
            self._grad_anchor = torch.zeros((), dtype=out.dtype, device=out.device, requires_grad=True)
            out = out + self._grad_anchor
        self.output = out
        out.register_hook(self._store_coefficients)
        return out

    def has_gradient(self) -> bool:
        """Whether the backward pass reached this block's attention output."""
        return self.coefficients is not None

    def _store_coefficients(self, grad: torch.Tensor) -> None:
        cls_grad = grad[:, 0].detach()
        if self.out_weight is not None:
            cls_grad = cls_grad @ self.out_weight.to(cls_grad.dtype)
        self.coefficients = cls_grad.clone()

    def comparable(self, rebuilt: torch.Tensor) -> torch.Tensor:
        """The rebuilt [class] attention output ``(B, C)`` mapped to where the hook read the model's."""
        if self.out_weight is None:
            return rebuilt
        out = rebuilt @ self.out_weight.to(rebuilt.dtype).T
        return out if self.out_bias is None else out + self.out_bias.to(rebuilt.dtype)

    def _maybe_attention_row(self) -> None:
        k = self._k
        if self.q_cls is None or k is None:
            return
        if self.attn_row is not None:
            raise RecordError(f"block {self.index} ran twice in one forward pass")
        # At least float32 and outside any autocast the caller runs the model in: the row is what
        # the maps are made of, so they come out in float32 whatever precision the model runs in.
        # (q and k are detached: no graph is recorded. The autocast guard is entered only when
        # autocast is on: entering it costs more than the row on a GPU at batch 1.)
        work = torch.promote_types(k.dtype, torch.float32)
        on = torch.is_autocast_enabled(k.device.type)
        with torch.autocast(k.device.type, enabled=False) if on else contextlib.nullcontext():
            self.attn_row = class_attention_row(self.q_cls.to(work), k.to(work), self.scale)
        self._k = None


class AttentionSite(ABC):
    """One attention block of a model: installs the hooks that fill its ``BlockRecord``."""

    module: nn.Module

    @property
    @abstractmethod
    def scale(self) -> float:
        """The factor applied to ``q . k`` before the softmax."""

    @abstractmethod
    def install(self, record: BlockRecord) -> list[torch.utils.hooks.RemovableHandle]:
        """Register hooks on the model that fill ``record``; return every handle."""

    def output_projection(self) -> nn.Linear | None:
        """The linear map from the attention output (heads concatenated) to the residual stream,
        when it is one ``nn.Linear`` applied to each token alone; else ``None``."""
        return None


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, H*d)`` -> ``(B, H, N, d)``."""
    batch, tokens, width = x.shape
    return x.reshape(batch, tokens, heads, width // heads).permute(0, 2, 1, 3)


class ProjectionSite(AttentionSite):
    """Attention with separate query, key, value and output projections (``nn.Linear`` modules):
    Hugging Face ViTs (``q_proj, k_proj, v_proj, o_proj``), timm's class attention (``q, k, v,
    proj``), and custom ViTs built the same way.

    The query projection may see all tokens ``(B, N, C)`` or only the [class] token ``(B, C)``
    (class attention); the output projection's input is the attention output ``(B, N, C)`` or
    ``(B, 1, C)``.
    """

    def __init__(
        self,
        module: nn.Module,
        q: nn.Module,
        k: nn.Module,
        v: nn.Module,
        out: nn.Module,
        heads: int,
        scale: float | None = None,
    ) -> None:
        self.module, self.q, self.k, self.v, self.out, self.heads = module, q, k, v, out, int(heads)
        width = int(getattr(k, "out_features", 0) or 0)
        if scale is None and not width:
            raise ValueError("ProjectionSite: give scale= when the key projection has no out_features")
        self._scale = scale if scale is not None else (width // self.heads) ** -0.5

    @property
    def scale(self) -> float:
        return float(self._scale)

    def output_projection(self) -> nn.Linear | None:
        return self.out if isinstance(self.out, nn.Linear) else None

    def install(self, record: BlockRecord) -> list[torch.utils.hooks.RemovableHandle]:
        heads = self.heads

        def on_query(_module, _args, q):
            q = q[:, None] if q.ndim == 2 else q  # class attention projects the [class] token alone
            record.query(split_heads(q, heads))

        def on_output(_module, args):
            return (record.attention_output(args[0]), *args[1:])

        return [
            self.q.register_forward_hook(on_query),
            self.k.register_forward_hook(lambda _m, _a, k: record.key(split_heads(k, heads))),
            self.v.register_forward_hook(lambda _m, _a, v: record.value(split_heads(v, heads))),
            self.out.register_forward_pre_hook(on_output),
        ]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` (``_orig_mod``), ``nn.DataParallel`` and
    ``DistributedDataParallel`` (``module``) wrappers: hooks go on it and it computes the same
    function, so explaining it explains the wrapped model."""
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, parallel) and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def model_identity(model: nn.Module) -> str:
    """The name a bank records for the model that made its features: timm's ``architecture.tag``
    when the model carries a pretrained config, else the class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    architecture = cfg.get("architecture")
    if architecture:
        tag = cfg.get("tag")
        return f"{architecture}.{tag}" if tag else architecture
    return type(model).__name__


class Adapter(ABC):
    """Where one family of ViTs keeps its tokens, attention, blocks and classifier: everything
    the package needs to know about a model goes through this interface.

    Subclass it to support a custom ViT (see the README, "Custom ViTs"): list the attention
    sites, say how many prefix tokens precede the patches, and map an input size to the grid.
    The rest (blocks, Grad-CAM layer, logits) has defaults that fit most ViTs.
    """

    family: str = "custom"
    #: other names of the family on the command line (``--model hf:...``)
    aliases: tuple[str, ...] = ()
    #: the top-level package of the library whose models it reads (``"timm"``); its hierarchical
    #: models are refused by name (``vitflow.adapters.hierarchical_reason``)
    library: str = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap_model(model)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter recognises ``model`` (used by ``resolve_adapter``)."""
        return False

    def validate(self) -> None:
        """Raise ``ValueError`` if the model's decision cannot be explained through its [class]
        token (e.g. a classifier on average-pooled patch tokens)."""

    @abstractmethod
    def sites(self) -> Sequence[AttentionSite]:
        """The attention blocks in forward order."""

    @abstractmethod
    def prefix_tokens(self) -> int:
        """Tokens before the patch tokens ([class], distillation, registers)."""

    @abstractmethod
    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The ``(h, w)`` patch grid for an input of ``image_size = (H, W)`` pixels."""

    def num_classes(self) -> int | None:
        """Classifier outputs, 0 for a headless backbone, ``None`` when unknown."""
        return None

    def logits(self, output: object) -> torch.Tensor:
        """The ``(B, K)`` tensor the targets score, from whatever the model's forward returns."""
        if isinstance(output, torch.Tensor) and output.ndim == 2:
            return output
        raise TypeError(
            f"{type(self.model).__name__} returned {type(output).__name__}, not a (B, K) tensor; "
            "call model.eval() (some models return tuples in training mode) or use an adapter "
            "whose logits() extracts the scores"
        )

    def full_attention(self) -> bool:
        """Whether every explained block is token-to-token self-attention (``N x N``); ``False``
        for class-attention blocks, where only the [class] token queries (CaiT)."""
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` logits (or features of a headless backbone) for ``x``: how every part of the
        package outside ``Capture`` runs the model (metrics, evaluation,
        memory banks)."""
        return self.logits(self.model(x))

    def blocks(self) -> Sequence[nn.Module]:
        """The transformer blocks in order, the i-th holding the i-th attention site (the sanity
        check re-initialises them): by default the ``ModuleList`` or ``Sequential`` that holds the
        attention modules in order."""
        attentions = [site.module for site in self.sites()]
        for candidate in self.model.modules():
            if isinstance(candidate, (nn.ModuleList, nn.Sequential)) and len(candidate) == len(attentions):
                pairs = zip(candidate, attentions, strict=True)
                if all(any(m is a for m in block.modules()) for block, a in pairs):
                    return list(candidate)
        raise ValueError(
            f"cannot find the transformer blocks of {type(self.model).__name__} (no ModuleList or Sequential "
            "holding its attention modules in order); override Adapter.blocks() for it"
        )

    def gradcam_layer(self) -> nn.Module:
        """The layer whose output tokens Grad-CAM weighs: the first normalisation of the last
        block (pytorch-grad-cam's usual ViT choice, ``blocks[-1].norm1`` in timm)."""
        last = self.blocks()[-1]
        norm = next((m for m in last.modules() if isinstance(m, nn.LayerNorm)), None)
        if norm is None:
            raise ValueError(
                f"{type(self.model).__name__}: the last block has no LayerNorm for Grad-CAM; override "
                "Adapter.gradcam_layer()"
            )
        return norm

    def gradcam_tokens(self, activation: torch.Tensor) -> torch.Tensor:
        """The Grad-CAM layer's output as ``(B, N, C)`` tokens (override for sequence-first layers)."""
        return activation

    def has_readout(self) -> bool:
        """Whether ``readout`` reads the output from an intermediate block (the methods registered
        with ``readout=True`` need it)."""
        return False

    def readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's output (as ``forward`` gives it) read from one block's output tokens
        ``(B, N, C)`` as if no block followed: the final normalisation, pooling and head. LeGrad
        scores every block this way. Families without one refuse it in one line."""
        raise NotImplementedError(
            f"{type(self.model).__name__}: vitflow cannot read the output from an intermediate block of "
            f"this model ({self.family} adapter has no readout)"
        )


class OverrideAdapter(Adapter):
    """Wraps an adapter with user-given geometry (``DAAM(model, prefix_tokens=..., grid=...)``)."""

    def __init__(self, inner: Adapter, prefix_tokens: int | None, grid: GridSpec | None) -> None:
        super().__init__(inner.model)
        self.inner = inner
        self.family = inner.family
        self._prefix = prefix_tokens
        self._grid = grid

    def validate(self) -> None:
        self.inner.validate()

    def sites(self) -> Sequence[AttentionSite]:
        return self.inner.sites()

    def prefix_tokens(self) -> int:
        return self.inner.prefix_tokens() if self._prefix is None else self._prefix

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        if self._grid is None:
            return self.inner.grid(image_size)
        height, width = self._grid(image_size) if callable(self._grid) else self._grid
        return int(height), int(width)

    def num_classes(self) -> int | None:
        return self.inner.num_classes()

    def has_readout(self) -> bool:
        return self.inner.has_readout()

    def readout(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner.readout(tokens)

    def logits(self, output: object) -> torch.Tensor:
        return self.inner.logits(output)

    def blocks(self) -> Sequence[nn.Module]:
        return self.inner.blocks()

    def full_attention(self) -> bool:
        return self.inner.full_attention()

    def gradcam_layer(self) -> nn.Module:
        return self.inner.gradcam_layer()

    def gradcam_tokens(self, activation: torch.Tensor) -> torch.Tensor:
        return self.inner.gradcam_tokens(activation)
