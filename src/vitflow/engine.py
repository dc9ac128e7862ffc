"""``DAAM``: hooks a model, runs one forward and one backward pass per batch, returns the maps.

Data flow: the adapter's hooks fill one :class:`~vitflow.adapters.base.BlockRecord` per block
during the forward pass (the [class] attention row, the values, the attention output); a target
scores the output; one backward pass, with parameters frozen, leaves ``dY/dT_b`` in every record;
:mod:`vitflow.core.daam` turns the records into maps.
"""

from __future__ import annotations

import torch
from torch import nn

from vitflow.adapters import Adapter, BlockRecord, GridSpec, resolve_adapter
from vitflow.core.daam import Rho, accumulate, block_map, class_token_output, token_relevance
from vitflow.result import DAAMResult
from vitflow.targets import TargetScores, as_target

# Largest relative error allowed between the model's [class] attention output and the sum of the
# token contributions vitflow rebuilt from the captured q, k, v. A wrong capture is off by O(1).
_IDENTITY_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 6e-2}


class DecompositionError(RuntimeError):
    """The captured tensors do not reproduce the model's [class] attention output."""


class DAAM:
    """Dynamic Accumulated Attention Maps for a Vision Transformer.

    Construct once, call on batches, leave with ``with`` or :meth:`close`; the model is left
    exactly as it was (hooks removed, parameters' ``requires_grad`` restored, nothing written)::

        with DAAM(model) as daam:
            r = daam(x, target=None)    # x: (B, 3, H, W) preprocessed
        r.maps                          # (B, L, h, w) attention flow

    Args:
        model: a supported ViT (see :mod:`vitflow.adapters`), normally in ``eval()`` mode.
        rho: coefficient transform, ``"relu"`` or ``"identity"``; ``None`` uses the target's
            default (ReLU for classes, as in the published supervised code).
        normalize_blocks: min-max normalise each block map per image before accumulating.
        start_block: accumulate from this block on (1-based; default 1, the method as published).
        prefix_tokens: override the number of tokens before the patch grid.
        grid: override the patch grid: ``(h, w)`` or a function of the input ``(H, W)``.
        adapter: an :class:`~vitflow.adapters.base.Adapter` (class or instance) for models the
            registry does not recognise.
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
    ) -> None:
        if rho not in (None, "relu", "identity"):
            raise ValueError(f"rho must be 'relu', 'identity' or None, got {rho!r}")
        self.model = model
        self.rho = rho
        self.normalize_blocks = normalize_blocks
        self.start_block = start_block
        self.adapter = resolve_adapter(model, adapter, prefix_tokens, grid)
        self.adapter.validate()
        self._model_name = type(model).__name__
        sites = self.adapter.sites()
        if not sites:
            raise ValueError(
                f"{self._model_name}: the {self.adapter.family} adapter found no attention blocks"
            )
        self._records = [BlockRecord(index=i, scale=site.scale) for i, site in enumerate(sites)]
        self._handles = []
        try:
            for site, record in zip(sites, self._records, strict=True):
                self._handles.extend(site.install(record))
        except BaseException:
            self.close()
            raise

    # -- context management -------------------------------------------------------------------
    def __enter__(self) -> DAAM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # returns None: exceptions raised inside the block propagate

    def close(self) -> None:
        """Remove every hook; idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for record in self._records:
            record.clear()

    @property
    def closed(self) -> bool:
        return not self._handles

    # -- the method ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, target: object = None) -> DAAMResult:
        """Explain a batch.

        Args:
            x: ``(B, 3, H, W)`` preprocessed images on the model's device.
            target: ``None`` (predicted class), an int (same class for all), a sequence or 1-D
                tensor of ``B`` classes, or a :class:`~vitflow.targets.Target` object such as
                :class:`~vitflow.targets.KNNTarget` for backbones without a classifier.

        Returns:
            :class:`~vitflow.result.DAAMResult` with tensors on the model's device.
        """
        if self.closed:
            raise RuntimeError("this DAAM is closed; create a new one (DAAM(model)) to explain more images")
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"x must be a (B, C, H, W) tensor, got {shape}; add a batch dimension with x[None]"
            )
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "DAAM needs autograd for one backward pass; call it outside torch.inference_mode()"
            )

        explained = as_target(target, self.adapter.num_classes(), self._model_name)
        if hasattr(explained, "check_model"):
            explained.check_model(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            for p in params:  # no weight gradients: the graph starts at the first attention output
                p.requires_grad_(False)
            for record in self._records:
                record.active = True
            with torch.enable_grad():
                output = self.model(x)
                logits = self.adapter.logits(output)
                scored = explained(logits)
                with torch.autocast(x.device.type, enabled=False):  # checked in >= float32
                    self._check_records(x.shape[0])
                origin = self._records[0].output
                torch.autograd.grad(scored.scores.sum(), [origin])
            rho = self.rho or explained.rho
            return self._result(x, logits, scored, rho)
        finally:
            for p in params:
                p.requires_grad_(True)
            for record in self._records:
                record.active = False
                record.clear()

    def _check_records(self, batch: int) -> None:
        errors = []
        for record in self._records:
            if record.attn_row is None or record.v is None or record.output is None:
                raise DecompositionError(
                    f"{self._model_name}: block {record.index} was not captured during the forward pass "
                    f"(query {'ok' if record.q_cls is not None else 'missing'}, values "
                    f"{'ok' if record.v is not None else 'missing'}, output "
                    f"{'ok' if record.output is not None else 'missing'}); the {self.adapter.family} "
                    "adapter's hooks do not match this model's forward"
                )
            model_output = record.output[:, 0].detach()
            work = record.attn_row.dtype
            rebuilt = record.comparable(class_token_output(record.attn_row, record.v.to(work)))
            if rebuilt.shape != model_output.shape or rebuilt.shape[0] != batch:
                raise DecompositionError(
                    f"{self._model_name}: block {record.index}: rebuilt [class] output has shape "
                    f"{tuple(rebuilt.shape)}, the model's has {tuple(model_output.shape)}"
                )
            target = model_output.to(work)
            error = (rebuilt - target).abs().amax(dim=1) / target.abs().amax(dim=1).clamp_min(1e-12)
            errors.append(error.max())
        # one device-to-host copy for all blocks (a sync per block costs more than the check on a GPU)
        for record, worst in zip(self._records, torch.stack(errors).tolist(), strict=True):
            tolerance = _IDENTITY_TOLERANCE.get(record.v.dtype, 1e-3)
            if not worst <= tolerance:
                raise DecompositionError(
                    f"{self._model_name}: block {record.index}: the token contributions rebuilt from the "
                    f"captured q, k, v do not sum to the model's [class] attention output (relative error "
                    f"{worst:.2e} > {tolerance:.0e}); this attention computes something the "
                    f"{self.adapter.family} adapter does not capture. Write a custom adapter for it "
                    "(README, 'Custom ViTs') or report the model"
                )

    def _result(self, x: torch.Tensor, logits: torch.Tensor, scored: TargetScores, rho: Rho) -> DAAMResult:
        prefix = self.adapter.prefix_tokens()
        grid = self.adapter.grid((x.shape[-2], x.shape[-1]))
        relevance = []
        # Maps are made in at least float32, also when the caller runs the model under autocast.
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            for record in self._records:
                if record.coefficients is None:
                    raise DecompositionError(
                        f"{self._model_name}: block {record.index} received no gradient; its attention "
                        "output does not reach the explained score"
                    )
                work = record.attn_row.dtype
                relevance.append(
                    token_relevance(record.attn_row, record.v.to(work), record.coefficients.to(work), rho)
                )
            relevance = torch.stack(relevance, dim=1)  # b l n
            block_maps = block_map(relevance, prefix, grid)
            maps = accumulate(block_maps, self.normalize_blocks, self.start_block)
        return DAAMResult(
            block_maps=block_maps,
            maps=maps,
            relevance=relevance,
            logits=logits.detach(),
            target=scored.labels.detach(),
            score=scored.scores.detach(),
            prefix_tokens=prefix,
            grid=grid,
            feature_weights=None if scored.weights is None else scored.weights.detach(),
            probabilities=None if scored.probabilities is None else scored.probabilities.detach(),
        )


def explain(model: nn.Module, x: torch.Tensor, target: object = None, **options) -> DAAMResult:
    """One call: hook ``model``, explain the batch ``x``, restore the model.

    ``options`` are :class:`DAAM`'s keyword arguments. For many batches, keep one ``DAAM`` open
    instead (hooks are installed once).
    """
    with DAAM(model, **options) as daam:
        return daam(x, target)
