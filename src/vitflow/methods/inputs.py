"""What every registered method receives: one batch, its target, and the passes methods share,
each computed at most once (one DAAM pass for every DAAM variant, one attention trace for every
attention method, one forward pass for the token states)."""

from __future__ import annotations

from functools import cached_property

import torch

from vitflow.adapters import Adapter
from vitflow.explainer.daam import DAAM
from vitflow.explainer.result import DAAMResult
from vitflow.methods.cp_lrp import cp_lrp
from vitflow.methods.tokens import TokenStates, token_states
from vitflow.methods.trace import AttentionTrace, trace_attention


class MethodInputs:
    """``x`` ``(B, C, H, W)`` preprocessed images, ``target`` ``(B,)`` classes (or any target
    ``DAAM`` takes), the model's ``adapter``; ``input_grad``: the trace also keeps
    ``dY/dx``."""

    def __init__(self, adapter: Adapter, x: torch.Tensor, target: object, input_grad: bool = False) -> None:
        self.adapter, self.x, self.target, self.input_grad = adapter, x, target, input_grad

    @cached_property
    def daam(self) -> DAAMResult:
        with DAAM(self.adapter.model, adapter=self.adapter) as daam:
            return daam(self.x, target=self.target)

    @cached_property
    def trace(self) -> AttentionTrace:
        return trace_attention(self.adapter.model, self.x, self.target, self.adapter, self.input_grad)

    @cached_property
    def daam_lrp(self) -> DAAMResult:
        """DAAM with its channel coefficients through CP-LRP's backward pass (``daam_lrp``)."""
        with cp_lrp(self.adapter), DAAM(self.adapter.model, adapter=self.adapter) as daam:
            return daam(self.x, target=self.target)

    @cached_property
    def tokens(self) -> TokenStates:
        return token_states(self.adapter, self.x, self.target)
