"""The one gateway to the model: every method that needs a forward and a backward pass goes
through ``Capture``.

A ``Capture`` owns what such a pass needs and must undo: the adapter's hooks (installed once,
removed on ``Capture.close``), parameters frozen during the pass and restored after it, the
per-block records (activated for the pass, cleared after it), the inference-mode guard, the
logits read through ``Adapter.logits``, the target's score, the decomposition check and the
backward pass. DAAM (``vitflow.explainer.daam``) and the attention trace
(``vitflow.methods.trace``) are thin users of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vitflow.adapters import Adapter, BlockRecord, GridSpec, resolve_adapter
from vitflow.core.daam import class_token_output, class_token_outputs
from vitflow.targets import Target, TargetScores, as_target

# Largest relative error allowed between the model's [class] attention output and the sum of the
# token contributions rebuilt from the captured q, k, v. A wrong capture is off by O(1).
_IDENTITY_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 6e-2}


def present(tensors: Sequence[torch.Tensor | None], what: str) -> list[torch.Tensor]:
    """``tensors`` when every block has one (what a checked pass guarantees), else an error."""
    out = [t for t in tensors if t is not None]
    if len(out) != len(tensors):
        raise DecompositionError(f"{len(tensors) - len(out)} blocks have no {what} after the pass")
    return out


def _relative_error(rebuilt: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(..., C)`` -> ``(...)``: the largest absolute difference over the channels, relative to the
    reference's largest magnitude."""
    return (rebuilt - reference).abs().amax(dim=-1) / reference.abs().amax(dim=-1).clamp_min(1e-12)


class DecompositionError(RuntimeError):
    """The captured tensors do not reproduce the model's [class] attention output."""


@dataclass(frozen=True)
class Pass:
    """What one forward + backward pass through a ``Capture`` gives, besides the records.

    ``logits`` ``(B, K)`` (attached to the graph; detach before keeping); ``scored`` the target's
    scores and labels; ``target`` the target object that scored them; ``input_grad``
    ``(B, C, H, W)`` ``dY/dx`` when requested, else ``None``.
    """

    logits: torch.Tensor
    scored: TargetScores
    target: Target
    input_grad: torch.Tensor | None


class Capture:
    """Hooks on a model's attention blocks, and one forward + backward pass at a time:

        with Capture(model) as capture, capture.run(x, target) as p:
            capture.records     # one filled BlockRecord per attention block
            p.logits, p.scored  # the model's output and the explained score

    Args:
        model: a supported ViT; ``torch.compile``, ``nn.DataParallel`` and
            ``DistributedDataParallel`` wrappers are unwrapped (the same function, one device).
        adapter, prefix_tokens, grid: as for ``DAAM``.
        record_type: the ``BlockRecord`` subclass the hooks fill (the attention trace keeps
            all queries and keys).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        adapter: Adapter | type[Adapter] | None = None,
        prefix_tokens: int | None = None,
        grid: GridSpec | None = None,
        record_type: type[BlockRecord] = BlockRecord,
    ) -> None:
        self.adapter = resolve_adapter(model, adapter, prefix_tokens, grid)
        self.adapter.validate()
        self.model = self.adapter.model
        self.model_name = type(self.model).__name__
        sites = self.adapter.sites()
        if not sites:
            family = self.adapter.family
            raise ValueError(f"{self.model_name}: the {family} adapter found no attention blocks")
        self.records = [record_type(index=i, scale=site.scale) for i, site in enumerate(sites)]
        self.uniform = False  # set by each pass's check: every block's records alike
        self._handles: list = []
        try:
            for site, record in zip(sites, self.records, strict=True):
                self._handles.extend(site.install(record))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # returns None: exceptions raised inside the block propagate

    def close(self) -> None:
        """Remove every hook; idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for record in self.records:
            record.clear()

    @property
    def closed(self) -> bool:
        return not self._handles

    @contextmanager
    def open_pass(
        self, x: torch.Tensor, target: object = None, input_grad: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, Target]]:
        """The forward pass of ``x`` with the records filling, its graph kept for the caller's own
        gradients: yields ``(inputs, logits, explained target)`` with autograd on and the
        parameters frozen (the graph starts at the first attention output, or at ``inputs`` with
        ``input_grad``); everything is restored and the records cleared when the block ends.
        ``run`` is this pass with the explained score's backward pass."""
        if self.closed:
            raise RuntimeError("this capture is closed; create a new one to explain more images")
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"x must be a (B, C, H, W) tensor, got {shape}; add a batch dimension with x[None]"
            )
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "explaining needs autograd for one backward pass; call it outside torch.inference_mode()"
            )
        explained = as_target(target, self.adapter.num_classes(), self.model_name)
        if hasattr(explained, "check_model"):
            explained.check_model(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            for p in params:  # no weight gradients: the graph starts at the first attention output
                p.requires_grad_(False)
            for record in self.records:
                record.active = True
            inputs = x.detach().requires_grad_(True) if input_grad else x
            with torch.enable_grad():
                yield inputs, self.adapter.logits(self.model(inputs)), explained
        finally:
            for p in params:
                p.requires_grad_(True)
            for record in self.records:
                record.active = False
                record.clear()

    @contextmanager
    def run(self, x: torch.Tensor, target: object = None, input_grad: bool = False) -> Iterator[Pass]:
        """One forward and one backward pass of ``x`` for ``target``; the records are filled inside
        the ``with`` block and cleared when it ends.

        Args:
            x: ``(B, C, H, W)`` preprocessed images on the model's device.
            target: as for ``DAAM`` (``None``, an int, one class per image, or a
                ``Target``).
            input_grad: also compute ``dY/dx`` (the backward pass then reaches the input).
        """
        with self.open_pass(x, target, input_grad) as (inputs, logits, explained):
            scored = explained(logits)
            with torch.autocast(x.device.type, enabled=False):  # checked in >= float32
                self._check_records(x.shape[0])
            wrt = inputs if input_grad else self.records[0].output
            assert wrt is not None  # _check_records saw every block's output
            grads = torch.autograd.grad(scored.scores.sum(), [wrt])
            for record in self.records:
                if not record.has_gradient():
                    raise DecompositionError(
                        f"{self.model_name}: block {record.index} received no gradient; its attention "
                        "output does not reach the explained score"
                    )
            yield Pass(logits, scored, explained, grads[0].detach() if input_grad else None)

    def _check_records(self, batch: int) -> None:
        """The decomposition identity for every block: the token contributions rebuilt from the
        captured q, k, v sum to the model's own [class] attention output."""
        for record in self.records:
            if record.attn_row is None or record.v is None or record.output is None:
                raise DecompositionError(
                    f"{self.model_name}: block {record.index} was not captured during the forward pass "
                    f"(query {'ok' if record.q_cls is not None else 'missing'}, values "
                    f"{'ok' if record.v is not None else 'missing'}, output "
                    f"{'ok' if record.output is not None else 'missing'}); the {self.adapter.family} "
                    "adapter's hooks do not match this model's forward"
                )
        rows = present([r.attn_row for r in self.records], "attention row")
        values = present([r.v for r in self.records], "values")
        outputs = [o[:, 0].detach() for o in present([r.output for r in self.records], "output")]
        # every block alike (the usual case): the check, and DAAM's maps after the backward pass, are
        # a few operations over the stacked blocks instead of a few per block
        self.uniform = all(
            r.out_weight is None
            and a.shape == rows[0].shape
            and a.dtype == rows[0].dtype
            and v.shape == values[0].shape
            and o.shape == outputs[0].shape
            for r, a, v, o in zip(self.records, rows, values, outputs, strict=True)
        )
        rebuilt: torch.Tensor | list[torch.Tensor]
        if self.uniform:
            rebuilt = class_token_outputs(rows, values)
        else:
            rebuilt = [
                r.comparable(class_token_output(a, v.to(a.dtype)))
                for r, a, v in zip(self.records, rows, values, strict=True)
            ]
        for record, mine, model_output in zip(self.records, rebuilt, outputs, strict=True):
            if mine.shape != model_output.shape or mine.shape[0] != batch:
                raise DecompositionError(
                    f"{self.model_name}: block {record.index}: rebuilt [class] output has shape "
                    f"{tuple(mine.shape)}, the model's has {tuple(model_output.shape)}"
                )
        if isinstance(rebuilt, torch.Tensor):
            reference = torch.stack(outputs).to(rebuilt.dtype)
            worst_per_block = _relative_error(rebuilt, reference).amax(dim=1)
        else:
            worst_per_block = torch.stack(
                [
                    _relative_error(mine, out.to(mine.dtype)).max()
                    for mine, out in zip(rebuilt, outputs, strict=True)
                ]
            )
        # one device-to-host copy for all blocks (a sync per block costs more than the check on a GPU)
        for record, worst in zip(self.records, worst_per_block.tolist(), strict=True):
            tolerance = _IDENTITY_TOLERANCE.get(record.v.dtype, 1e-3) if record.v is not None else 1e-3
            if not worst <= tolerance:
                raise DecompositionError(
                    f"{self.model_name}: block {record.index}: the token contributions rebuilt from the "
                    f"captured q, k, v do not sum to the model's [class] attention output (relative error "
                    f"{worst:.2e} > {tolerance:.0e}); this attention computes something the "
                    f"{self.adapter.family} adapter does not capture. Write a custom adapter for it "
                    "(README, 'Custom ViTs') or report the model"
                )
