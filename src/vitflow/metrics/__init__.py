"""Evaluation of explanations; each metric is self-contained, batched, and registered where it is
defined (``vitflow.registry.METRICS``)."""

from vitflow.metrics.context import ScoringContext
from vitflow.metrics.faithfulness import confidence_change, deletion_insertion, perturbation_test
from vitflow.metrics.localization import (
    energy_pointing_game,
    pointing_game,
    segmentation_scores,
    upsample_maps,
)
from vitflow.metrics.saco import saco
from vitflow.metrics.sanity import cascading_randomization, spearman
from vitflow.registry import METRICS

__all__ = [
    "METRICS",
    "ScoringContext",
    "cascading_randomization",
    "confidence_change",
    "deletion_insertion",
    "energy_pointing_game",
    "perturbation_test",
    "pointing_game",
    "saco",
    "segmentation_scores",
    "spearman",
    "upsample_maps",
]
