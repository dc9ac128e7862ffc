"""Feature targets for backbones without a classifier: ``Y = <w, f>`` with ``w`` held constant."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vitflow.core.daam import Rho
from vitflow.core.knn import dimension_weights
from vitflow.targets.base import TargetScores


def _check_features(output: torch.Tensor, dim: int, what: str) -> None:
    if output.ndim != 2:
        raise ValueError(f"{what} needs (B, D) features from the model, got shape {tuple(output.shape)}")
    if output.shape[1] != dim:
        raise ValueError(
            f"{what} has {dim}-dimensional features but the model outputs {output.shape[1]}; "
            "use weights/features made with this model"
        )


def weighted_feature_score(output: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Y = <w, f>`` per image, ``w`` detached (a constant), ``f`` the unnormalised output."""
    return (weights.detach().to(output.dtype) * output).sum(dim=1)


class FeatureWeightTarget:
    """Explain ``Y = <w, f>`` for a given weight vector ``w``: ``(D,)`` for all images or ``(B, D)``."""

    rho: Rho = "identity"

    def __init__(self, weights: torch.Tensor) -> None:
        weights = torch.as_tensor(weights)
        if weights.ndim not in (1, 2) or not weights.dtype.is_floating_point:
            raise ValueError(
                f"weights must be a float (D,) or (B, D) tensor, got {tuple(weights.shape)} {weights.dtype}"
            )
        self.weights = weights

    def __call__(self, output: torch.Tensor) -> TargetScores:
        _check_features(output, self.weights.shape[-1], "FeatureWeightTarget")
        weights = self.weights.to(output.device).expand(output.shape[0], -1)
        labels = torch.full((output.shape[0],), -1, dtype=torch.long, device=output.device)
        return TargetScores(weighted_feature_score(output, weights), labels, weights)


class ReferenceTarget:
    """Weights from reference features instead of bank neighbours: ``pi`` averages ``f_hat * m`` over
    the references (normalised here), then the section 5 normalisation. ``references``: ``(R, D)``
    shared by all images, or ``(B, R, D)``."""

    rho: Rho = "identity"

    def __init__(self, references: torch.Tensor) -> None:
        references = torch.as_tensor(references)
        if references.ndim == 1:
            references = references[None]
        if references.ndim not in (2, 3):
            raise ValueError(f"references must be (R, D) or (B, R, D), got {tuple(references.shape)}")
        self.references = F.normalize(references.float(), dim=-1)

    def __call__(self, output: torch.Tensor) -> TargetScores:
        _check_features(output, self.references.shape[-1], "ReferenceTarget")
        refs = self.references.to(output.device)
        if refs.ndim == 2:
            refs = refs.expand(output.shape[0], -1, -1)
        query = F.normalize(output.detach().float(), dim=1)
        weights = dimension_weights(query, refs)
        labels = torch.full((output.shape[0],), -1, dtype=torch.long, device=output.device)
        return TargetScores(weighted_feature_score(output, weights), labels, weights)


class SimilarityTarget:
    """Explain the cosine similarity between a model's output embedding and reference embeddings
    (e.g. CLIP text embeddings): zero-shot classification over ``embeddings``.

    Args:
        embeddings: ``(T, D)`` (or ``(D,)``) reference embeddings, e.g. ``model.encode_text(tokens)``.
        index: which reference to explain: ``None`` (the most similar per image), an int, or one per
            image.
        logit_scale: multiplies the similarities before the softmax of ``probabilities`` (CLIP: 100).
    """

    rho: Rho = "relu"

    def __init__(
        self,
        embeddings: torch.Tensor,
        index: int | Sequence[int] | torch.Tensor | None = None,
        logit_scale: float = 100.0,
    ) -> None:
        embeddings = torch.as_tensor(embeddings)
        embeddings = embeddings[None] if embeddings.ndim == 1 else embeddings
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (T, D) or (D,), got {tuple(embeddings.shape)}")
        self.embeddings = F.normalize(embeddings.detach().float(), dim=1)
        self.index, self.logit_scale = index, logit_scale

    def __call__(self, output: torch.Tensor) -> TargetScores:
        from vitflow.targets.classes import ClassTarget

        _check_features(output, self.embeddings.shape[1], "SimilarityTarget")
        refs = self.embeddings.to(device=output.device, dtype=output.dtype)
        similarities = F.normalize(output, dim=1) @ refs.T  # b t
        labels = ClassTarget(self.index).resolve(similarities)
        scores = similarities.gather(1, labels[:, None])[:, 0]
        probabilities = (self.logit_scale * similarities.detach()).softmax(dim=1)
        return TargetScores(scores, labels, probabilities=probabilities)
