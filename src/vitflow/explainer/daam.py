"""``DAAM``: hooks a model, runs one forward and one backward pass per batch, returns the maps.

Data flow, through ``Capture`` (the one gateway to the model): the
adapter's hooks fill one ``BlockRecord`` per block during the forward
pass (the [class] attention row, the values, the attention output); a target
scores the output; one backward pass, with parameters frozen, leaves ``dY/dT_b`` in every record;
``vitflow.core.daam`` turns the records into maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from vitflow.adapters import Adapter, GridSpec
from vitflow.core.daam import Rho, accumulate, block_map, token_relevance, token_relevance_all_blocks
from vitflow.explainer.capture import Capture, DecompositionError, present
from vitflow.explainer.result import DAAMResult
from vitflow.targets import TargetScores

__all__ = ["DAAM", "DecompositionError", "explain"]


class DAAM:
    """Dynamic Accumulated Attention Maps for a Vision Transformer.

    Construct once, call on batches, leave with ``with`` or ``close``; the model is left
    exactly as it was (hooks removed, parameters' ``requires_grad`` restored, nothing written):

        with DAAM(model) as daam:
            r = daam(x, target=None)    # x: (B, 3, H, W) preprocessed
        r.maps                          # (B, L, h, w) attention flow

    Args:
        model: a supported ViT (see ``vitflow.adapters``), normally in ``eval()`` mode.
        rho: coefficient transform, ``"relu"`` or ``"identity"``; ``None`` uses the target's
            default (ReLU for classes, as in the published supervised code).
        normalize_blocks: min-max normalise each block map per image before accumulating.
        start_block: accumulate from this block on (1-based; default 1, the method as published).
        prefix_tokens: override the number of tokens before the patch grid.
        grid: override the patch grid: ``(h, w)`` or a function of the input ``(H, W)``.
        adapter: an ``Adapter`` (class or instance) for models the
            registry does not recognise.
        class_names: the model's class names, for ``target="tabby"`` (default: the model's own,
            from timm's ImageNet information or ``config.id2label``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        rho: Rho | None = None,
        normalize_blocks: bool = False,
        start_block: int = 1,
        prefix_tokens: int | None = None,
        grid: GridSpec | None = None,
        adapter: Adapter | type[Adapter] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if rho not in (None, "relu", "identity"):
            raise ValueError(f"rho must be 'relu', 'identity' or None, got {rho!r}")
        self.rho = rho
        self.normalize_blocks = normalize_blocks
        self.start_block = start_block
        self._capture = Capture(model, adapter=adapter, prefix_tokens=prefix_tokens, grid=grid)
        self.adapter = self._capture.adapter
        self.model = self._capture.model
        self.class_names = list(class_names) if class_names is not None else None

    # -- context management -------------------------------------------------------------------
    def __enter__(self) -> DAAM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # returns None: exceptions raised inside the block propagate

    def close(self) -> None:
        """Remove every hook; idempotent."""
        self._capture.close()

    @property
    def closed(self) -> bool:
        return self._capture.closed

    # -- the method ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, target: object = None, *, input_grad: bool = False) -> DAAMResult:
        """Explain a batch.

        Args:
            x: ``(B, 3, H, W)`` preprocessed images on the model's device.
            target: ``None`` (predicted class), an int or a class name (same class for all), a
                sequence or 1-D tensor of ``B`` classes (indices or names), or a
                ``Target`` object such as ``KNNTarget``
                for backbones without a classifier.
            input_grad: also keep ``dY/dx`` (``result.input_grad``), from the same backward pass
                (which then reaches the input).

        Returns:
            ``DAAMResult`` with tensors on the model's device.
        """
        if self.closed:
            raise RuntimeError("this DAAM is closed; create a new one (DAAM(model)) to explain more images")
        with self._capture.run(x, self._by_index(target), input_grad=input_grad) as p:
            result = self._result(x, p.logits, p.scored, self.rho or p.target.rho)
            return replace(result, input_grad=p.input_grad) if input_grad else result

    def _by_index(self, target: object) -> object:
        """Class names in ``target`` as the indices they name (``class_index``)."""
        named = isinstance(target, str) or (
            isinstance(target, list | tuple) and any(isinstance(t, str) for t in target)
        )
        if not named:
            return target
        from vitflow.models.load import model_class_names
        from vitflow.targets.names import class_index

        if self.class_names is None:
            self.class_names = model_class_names(self.model)
        if isinstance(target, str):
            return class_index(target, self.class_names)
        assert isinstance(target, list | tuple)  # named says so
        return [class_index(t, self.class_names) for t in target]

    def _result(self, x: torch.Tensor, logits: torch.Tensor, scored: TargetScores, rho: Rho) -> DAAMResult:
        prefix = self.adapter.prefix_tokens()
        grid = self.adapter.grid((x.shape[-2], x.shape[-1]))
        records = self._capture.records
        rows = present([r.attn_row for r in records], "attention row")
        values = present([r.v for r in records], "values")
        coefficients = present([r.coefficients for r in records], "coefficients")
        # Maps are made in at least float32, also when the caller runs the model under autocast.
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            if self._capture.uniform:  # the usual case: every block alike, a few kernels in all
                relevance = token_relevance_all_blocks(rows, values, coefficients, rho)  # b l n
            else:
                relevance = torch.stack(
                    [
                        token_relevance(a, v.to(a.dtype), c.to(a.dtype), rho)
                        for a, v, c in zip(rows, values, coefficients, strict=True)
                    ],
                    dim=1,
                )
            block_maps = block_map(relevance, prefix, grid)
            maps = accumulate(block_maps, self.normalize_blocks, self.start_block)
        return DAAMResult(
            block_maps=block_maps,
            maps=maps,
            relevance=relevance,
            logits=logits.detach(),
            target=scored.target.detach(),
            score=scored.scores.detach(),
            prefix_tokens=prefix,
            grid=grid,
            feature_weights=None if scored.weights is None else scored.weights.detach(),
            probabilities=None if scored.probabilities is None else scored.probabilities.detach(),
        )


def explain(model: nn.Module, x: torch.Tensor, target: object = None, **options) -> DAAMResult:
    """One call: hook ``model``, explain the batch ``x``, restore the model.

    ``options`` are ``DAAM``'s keyword arguments. For many batches, keep one ``DAAM`` open
    instead (hooks are installed once).
    """
    with DAAM(model, **options) as daam:
        return daam(x, target)
