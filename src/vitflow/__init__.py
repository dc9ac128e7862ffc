"""vitflow: Dynamic Accumulated Attention Maps (DAAM) for Vision Transformers.

Implements Liao, Gao & Zhang, "Dynamic Accumulated Attention Map for Interpreting Evolution of
Decision-Making in Vision Transformer", Pattern Recognition 165 (2025) 111607.
"""

from vitflow.adapters import Adapter, AttentionSite, ProjectionSite, register_adapter
from vitflow.explainer.daam import DAAM, DecompositionError, explain
from vitflow.explainer.result import DAAMResult
from vitflow.integrations import DAAMAttribution, DAAMCam
from vitflow.outputs.maps import SavedMaps, load_maps
from vitflow.targets import (
    ClassTarget,
    FeatureWeightTarget,
    KNNTarget,
    MemoryBank,
    OutputTarget,
    ReferenceTarget,
    SimilarityTarget,
    Target,
)
from vitflow.version import __version__

__all__ = [
    "DAAM",
    "DAAMAttribution",
    "DAAMCam",
    "Adapter",
    "AttentionSite",
    "ClassTarget",
    "DAAMResult",
    "DecompositionError",
    "FeatureWeightTarget",
    "KNNTarget",
    "MemoryBank",
    "OutputTarget",
    "ProjectionSite",
    "ReferenceTarget",
    "SavedMaps",
    "SimilarityTarget",
    "Target",
    "__version__",
    "explain",
    "load_maps",
    "register_adapter",
]
