"""Evaluation of explanations; each metric is self-contained and batched."""

from vitflow.metrics.localization import pointing_game, upsample_maps

__all__ = ["pointing_game", "upsample_maps"]
