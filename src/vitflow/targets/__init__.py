"""What to explain: class logits, feature weights, and k-NN over a memory bank."""

from vitflow.targets.bank import BankError, MemoryBank
from vitflow.targets.base import Target, TargetScores
from vitflow.targets.classes import ClassTarget, OutputTarget, as_target
from vitflow.targets.features import FeatureWeightTarget, ReferenceTarget, SimilarityTarget
from vitflow.targets.knn import KNNTarget

__all__ = [
    "BankError",
    "ClassTarget",
    "OutputTarget",
    "FeatureWeightTarget",
    "KNNTarget",
    "MemoryBank",
    "ReferenceTarget",
    "SimilarityTarget",
    "Target",
    "TargetScores",
    "as_target",
]
