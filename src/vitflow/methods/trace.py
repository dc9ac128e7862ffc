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

from vitflow.adapters import Adapter, BlockRecord
from vitflow.adapters.base import split_heads
from vitflow.explainer.capture import Capture


@dataclass
class FullBlockRecord(BlockRecord):
    """A ``BlockRecord`` that keeps all queries and keys and the whole output gradient."""

    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    output_grad: torch.Tensor | None = None

    def query(self, q: torch.Tensor) -> None:
        if self.active:
            self.q = q.detach()
        super().query(q)  # the [class] row too: the capture checks the decomposition with it

    def key(self, k: torch.Tensor) -> None:
        if self.active:
            self.k = k.detach()
        super().key(k)

    def _store_coefficients(self, grad: torch.Tensor) -> None:
        grad = grad.detach()
        if self.out_weight is not None:  # output hooked after out_proj: map back through it
            grad = grad @ self.out_weight.to(grad.dtype)
        self.output_grad = grad

    def has_gradient(self) -> bool:
        return self.output_grad is not None

    def clear(self) -> None:
        super().clear()
        self.q = self.k = self.output_grad = None


@dataclass(frozen=True)
class AttentionTrace:
    """``attention[b]`` and ``attention_grad[b]``: ``(B, H, N, N)`` per block; ``logits`` ``(B, K)``;
    ``target`` ``(B,)`` the explained class; ``input_grad`` ``(B, 3, H, W)`` when requested; geometry."""

    attention: list[torch.Tensor]
    attention_grad: list[torch.Tensor]
    logits: torch.Tensor
    target: torch.Tensor
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
    """Run ``model`` on ``x`` once forward and once backward (through
    ``Capture``, with its decomposition check) and return every block's
    attention and attention gradient for the explained score (targets as in ``DAAM``)."""
    with Capture(model, adapter=adapter, record_type=FullBlockRecord) as capture:
        with capture.run(x, target, input_grad=input_grad) as p, torch.no_grad():
            attention, attention_grad = [], []
            for record in capture.records:
                assert isinstance(record, FullBlockRecord)  # record_type above
                assert record.q is not None and record.k is not None and record.v is not None
                assert record.output_grad is not None  # the capture's backward pass filled it
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
                logits=p.logits.detach(),
                target=p.scored.target.detach(),
                prefix_tokens=capture.adapter.prefix_tokens(),
                grid=capture.adapter.grid((x.shape[-2], x.shape[-1])),
                input_grad=p.input_grad,
            )
