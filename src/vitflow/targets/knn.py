"""The self-supervised target: weighted k-NN over a memory bank gives the class and the
dimension-wise weights ``w``; the explained score is ``Y = <w, f>`` (method.md section 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitflow.core.daam import Rho
from vitflow.core.knn import dimension_weights, knn_votes
from vitflow.targets.bank import MemoryBank
from vitflow.targets.base import TargetScores
from vitflow.targets.features import _check_features, weighted_feature_score

#: k-NN neighbours unless told otherwise (DINO's k-NN evaluation uses 20)
DEFAULT_K = 20


class KNNTarget:
    """Explain a backbone's feature through its weighted k-NN classification over ``bank``.

    Per image, in closed form: cosine top-``k`` neighbours, votes ``exp(s / temperature)``, the
    predicted class, the neighbours that agree with it, ``pi``, ``w``. ``labels`` of the result
    are the k-NN predictions; ``probabilities`` are the normalised votes.

    Args:
        bank: the labelled memory bank (built with the same model).
        k: neighbours (20 in the paper, as in DINO's k-NN evaluation).
        temperature: vote temperature ``tau`` (0.07).
        chunk_size: bank rows compared at once (bounds memory).
        keep_on_device: ``"auto"`` copies the bank once to a CUDA model's device when the device has
            free memory for twice its size (searches then need no transfers); ``False`` streams
            chunks from where the bank is.
    """

    rho: Rho = "identity"

    def __init__(
        self,
        bank: MemoryBank,
        k: int = DEFAULT_K,
        temperature: float = 0.07,
        chunk_size: int = 65536,
        keep_on_device: bool | str = "auto",
    ) -> None:
        if not 1 <= k <= len(bank):
            raise ValueError(f"k must be between 1 and the bank size {len(bank)}, got {k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.bank, self.k, self.temperature, self.chunk_size = bank, k, temperature, chunk_size
        self.keep_on_device = keep_on_device

    def _bank_for(self, device: torch.device) -> MemoryBank:
        """The bank, moved once to ``device`` when that is a CUDA device with room for it."""
        if self.keep_on_device != "auto" or device.type != "cuda" or self.bank.features.device == device:
            return self.bank
        free, _ = torch.cuda.mem_get_info(device)
        size = self.bank.features.numel() * self.bank.features.element_size()
        if free > 2 * size:
            self.bank = self.bank.to(device)
        return self.bank

    def check_model(self, model: nn.Module) -> None:
        self.bank.check_model(model)

    def __call__(self, output: torch.Tensor) -> TargetScores:
        _check_features(output, self.bank.dim, "this memory bank")
        query = F.normalize(output.detach().float(), dim=1)
        bank = self._bank_for(output.device)
        similarities, indices = bank.topk(query, self.k, self.chunk_size)
        neighbours, labels = bank.gather(indices)
        votes = knn_votes(similarities, labels, bank.num_classes, self.temperature)
        predicted = votes.argmax(dim=1)
        weights = dimension_weights(query, neighbours, labels == predicted[:, None])
        return TargetScores(
            weighted_feature_score(output, weights),
            predicted,
            weights,
            probabilities=votes / votes.sum(dim=1, keepdim=True),
        )
