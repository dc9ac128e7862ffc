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
    ``DAAM`` takes), the model's ``adapter``; ``input_grad``: the trace and the CP-LRP passes also
    keep ``dY/dx``."""

    def __init__(self, adapter: Adapter, x: torch.Tensor, target: object, input_grad: bool = False) -> None:
        self.adapter, self.x, self.target, self.input_grad = adapter, x, target, input_grad
        self._daam_lrp: dict[float, DAAMResult] = {}

    @cached_property
    def daam(self) -> DAAMResult:
        with DAAM(self.adapter.model, adapter=self.adapter) as daam:
            return daam(self.x, target=self.target)

    @cached_property
    def trace(self) -> AttentionTrace:
        return trace_attention(self.adapter.model, self.x, self.target, self.adapter, self.input_grad)

    @property
    def daam_lrp(self) -> DAAMResult:
        """DAAM with its channel coefficients through CP-LRP's backward pass (``daam_lrp``)."""
        return self.daam_lrp_gamma(0.0)

    def daam_lrp_gamma(self, gamma: float) -> DAAMResult:
        """The same with the gamma rule on the linear layers (``daam_lrp_gamma_G``; 0: off), once
        per gamma; with ``input_grad``, the result keeps that backward's ``dY/dx`` (CP-LRP's pixel
        gradient)."""
        if gamma not in self._daam_lrp:
            with cp_lrp(self.adapter, gamma), DAAM(self.adapter.model, adapter=self.adapter) as daam:
                self._daam_lrp[gamma] = daam(self.x, target=self.target, input_grad=self.input_grad)
        return self._daam_lrp[gamma]

    @cached_property
    def tokens(self) -> TokenStates:
        return token_states(self.adapter, self.x, self.target)
