"""DAAM on a model: :class:`~vitflow.explainer.daam.DAAM`, the one gateway to the model
(:class:`~vitflow.explainer.capture.Capture`) and the typed result."""

from vitflow.explainer.capture import Capture
from vitflow.explainer.daam import DAAM, DecompositionError, explain
from vitflow.explainer.result import DAAMResult

__all__ = ["DAAM", "Capture", "DAAMResult", "DecompositionError", "explain"]
