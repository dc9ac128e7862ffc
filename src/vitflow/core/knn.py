"""Dimension-wise importance weights for self-supervised ViTs (method.md section 5), pure math.

Shapes: ``B`` images, ``D`` feature dimensions, ``k`` neighbours, ``C`` classes.
"""

from __future__ import annotations

import torch


def knn_votes(
    similarities: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """``vote(c) = sum over neighbours of class c of exp(s_i / tau)``: ``(B, k), (B, k) -> (B, C)``."""
    votes = torch.zeros(
        similarities.shape[0], num_classes, dtype=similarities.dtype, device=similarities.device
    )
    return votes.scatter_add_(1, labels, torch.exp(similarities / temperature))


def knn_predict(
    similarities: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """The weighted k-NN prediction ``argmax_c vote(c)``, ``(B,)``; a tie goes to the lower class index."""
    return knn_votes(similarities, labels, num_classes, temperature).argmax(dim=1)


def dimension_weights(
    query: torch.Tensor, neighbours: torch.Tensor, agree: torch.Tensor | None = None
) -> torch.Tensor:
    """``w`` from ``pi_d = mean_{i in P} f_hat_d m_{i,d}``, normalised by ``|sum pi|``, then min-max.

    Args:
        query: ``(B, D)`` L2-normalised features ``f_hat``.
        neighbours: ``(B, k, D)`` L2-normalised bank features ``m_i``.
        agree: ``(B, k)`` bool, the neighbours in ``P`` (those of the predicted class); ``None``
            uses all. Each row needs at least one.

    Returns:
        ``(B, D)`` weights in [0, 1]; all ones for an image whose ``w~`` is constant.
    """
    if agree is None:
        agree = torch.ones(neighbours.shape[:2], dtype=torch.bool, device=neighbours.device)
    count = agree.sum(dim=1, keepdim=True)
    if (count == 0).any():
        raise ValueError("every image needs at least one agreeing neighbour to weight its dimensions")
    products = query[:, None, :] * neighbours * agree[..., None]  # b k d
    pi = products.sum(dim=1) / count
    total = pi.sum(dim=1, keepdim=True)
    tilde = torch.where(total != 0, pi / total.abs(), pi)
    low = tilde.amin(dim=1, keepdim=True)
    span = tilde.amax(dim=1, keepdim=True) - low
    return torch.where(span > 0, (tilde - low) / torch.where(span > 0, span, 1), torch.ones_like(tilde))
