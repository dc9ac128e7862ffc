"""DAAM on a model: ``DAAM``, the one gateway to the model
(``Capture``) and the typed result."""

from vitflow.explainer.capture import Capture
from vitflow.explainer.daam import DAAM, DecompositionError, explain
from vitflow.explainer.result import DAAMResult

__all__ = ["DAAM", "Capture", "DAAMResult", "DecompositionError", "explain"]
