"""Full attention matrices and their gradients, for the baseline methods that need them.

The same adapters and hooks as DAAM capture every block's queries, keys and values (fused
attention stays on); the N x N attention ``A = softmax(q k^T * scale)`` is rebuilt explicitly
(the baselines need it) and its gradient comes in closed form from the gradient of the attention
output: ``O = A v`` gives ``dY/dA = (dY/dO) v^T`` per head. One forward and one backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitflow.adapters import Adapter, BlockRecord, resolve_adapter
from vitflow.adapters.base import split_heads
from vitflow.targets import as_target


@dataclass
class FullBlockRecord(BlockRecord):
    """A :class:`BlockRecord` that keeps all queries and keys and the whole output gradient."""

    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    output_grad: torch.Tensor | None = None

    def query(self, q: torch.Tensor) -> None:
        if self.active:
            self.q = q.detach()

    def key(self, k: torch.Tensor) -> None:
        if self.active:
            self.k = k.detach()

    def _store_coefficients(self, grad: torch.Tensor) -> None:
        grad = grad.detach()
        if self.out_weight is not None:  # output hooked after out_proj: map back through it
            grad = grad @ self.out_weight.to(grad.dtype)
        self.output_grad = grad

    def clear(self) -> None:
        super().clear()
        self.q = self.k = self.output_grad = None


@dataclass(frozen=True)
class AttentionTrace:
    """``attention[b]`` and ``attention_grad[b]``: ``(B, H, N, N)`` per block; ``logits`` ``(B, K)``;
    ``labels`` ``(B,)``; ``input_grad`` ``(B, 3, H, W)`` when requested; geometry."""

    attention: list[torch.Tensor]
    attention_grad: list[torch.Tensor]
    logits: torch.Tensor
    labels: torch.Tensor
    prefix_tokens: int
    grid: tuple[int, int]
    input_grad: torch.Tensor | None = None


def trace_attention(
    model: nn.Module,
    x: torch.Tensor,
    target: object = None,
    adapter: Adapter | type[Adapter] | None = None,
    input_grad: bool = False,
) -> AttentionTrace:
    """Run ``model`` on ``x`` once forward and once backward and return every block's attention
    and attention gradient for the explained score (targets as in :class:`~vitflow.DAAM`)."""
    adapter = resolve_adapter(model, adapter)
    adapter.validate()
    sites = adapter.sites()
    records = [FullBlockRecord(index=i, scale=site.scale) for i, site in enumerate(sites)]
    handles = []
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for site, record in zip(sites, records, strict=True):
            handles += site.install(record)
        for p in params:
            p.requires_grad_(False)
        for record in records:
            record.active = True
        explained = as_target(target, adapter.num_classes(), type(model).__name__)
        inputs = x.detach().clone().requires_grad_(input_grad)
        with torch.enable_grad():
            logits = adapter.logits(model(inputs))
            scored = explained(logits)
            wrt = [inputs] if input_grad else [records[0].output]
            grads = torch.autograd.grad(scored.scores.sum(), wrt)
        attention, attention_grad = [], []
        with torch.no_grad():
            for record in records:
                work = torch.promote_types(record.k.dtype, torch.float32)
                q, k, v = record.q.to(work), record.k.to(work), record.v.to(work)
                a = torch.softmax(q @ k.transpose(-1, -2) * record.scale, dim=-1)  # b h nq n
                heads = v.shape[1]
                grad_o = split_heads(record.output_grad.to(work), heads)  # b h nq d
                attention.append(a)
                attention_grad.append(grad_o @ v.transpose(-1, -2))  # dY/dA = dY/dO v^T
        return AttentionTrace(
            attention=attention,
            attention_grad=attention_grad,
            logits=logits.detach(),
            labels=scored.labels.detach(),
            prefix_tokens=adapter.prefix_tokens(),
            grid=adapter.grid((x.shape[-2], x.shape[-1])),
            input_grad=grads[0].detach() if input_grad else None,
        )
    finally:
        for handle in handles:
            handle.remove()
        for p in params:
            p.requires_grad_(True)
        for record in records:
            record.clear()
