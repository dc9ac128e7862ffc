"""Class targets: the pre-softmax logit of one class per image (method.md section 2)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vitflow.core.daam import Rho
from vitflow.targets.base import TargetScores


class ClassTarget:
    """The pre-softmax logit of one class per image (``None``: the predicted class)."""

    rho: Rho = "relu"

    def __init__(self, classes: int | Sequence[int] | torch.Tensor | None = None) -> None:
        if isinstance(classes, bool | str | bytes) or (
            classes is not None
            and not isinstance(classes, int | np.integer | Sequence | np.ndarray | torch.Tensor)
        ):
            raise TypeError(
                "target must be None, an int, a sequence of ints or a 1-D tensor, "
                f"got {type(classes).__name__}"
            )
        self.classes = classes

    def resolve(self, output: torch.Tensor) -> torch.Tensor:
        """``(B,)`` int64 class per image on ``output``'s device, validated against ``output``."""
        batch, num_classes = output.shape
        if self.classes is None:
            return output.detach().argmax(dim=1)
        if isinstance(self.classes, int | np.integer):
            labels = torch.full((batch,), self.classes, dtype=torch.long, device=output.device)
        else:
            labels = self.classes
            if not isinstance(labels, torch.Tensor):
                labels = torch.as_tensor(np.asarray(labels))
            labels = labels.to(output.device)
            if labels.ndim == 0:  # a scalar tensor broadcasts like an int
                labels = labels.expand(batch)
            if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(
                    f"target must be a 1-D sequence of class indices, got shape {tuple(labels.shape)} "
                    f"and dtype {labels.dtype}"
                )
            if labels.numel() != batch:
                raise ValueError(
                    f"got {labels.numel()} targets for a batch of {batch} images; give one class per "
                    "image, or a single int to explain the same class for all"
                )
            labels = labels.long()
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise ValueError(
                f"target class {int(labels[bad][0])} is out of range for a model with {num_classes} "
                f"classes; use 0..{num_classes - 1}"
            )
        return labels

    def __call__(self, output: torch.Tensor) -> TargetScores:
        labels = self.resolve(output)
        return TargetScores(output.gather(1, labels[:, None]).squeeze(1), labels)
