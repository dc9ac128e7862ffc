"""Class targets: the pre-softmax logit of one class per image (method.md section 2)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vitflow.core.daam import Rho
from vitflow.targets.base import Target, TargetScores


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
            given = self.classes
            labels = given if isinstance(given, torch.Tensor) else torch.as_tensor(np.asarray(given))
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


class OutputTarget:
    """pytorch-grad-cam's targets: callables on one image's model output (a 1-D tensor) returning
    the score to explain, e.g. ``ClassifierOutputTarget(281)``,
    ``ClassifierOutputSoftmaxTarget(281)`` or ``lambda out: out[3] - out[5]``; one per image (its
    convention) or one for the whole batch. The explained class is a target's ``category`` when
    it has one, else -1."""

    rho: Rho = "relu"

    def __init__(self, targets) -> None:
        self.targets = list(targets) if isinstance(targets, list | tuple) else [targets]
        if not self.targets or not all(callable(t) for t in self.targets):
            raise TypeError("target callables must be callables on one image's model output (1-D tensor)")

    def __call__(self, output: torch.Tensor) -> TargetScores:
        batch = output.shape[0]
        targets = self.targets * batch if len(self.targets) == 1 else self.targets
        if len(targets) != batch:
            raise ValueError(
                f"got {len(targets)} target callables for a batch of {batch} images; give one per image "
                "or one for all"
            )
        scores = []
        for i, target in enumerate(targets):
            score = target(output[i])
            if not isinstance(score, torch.Tensor) or score.numel() != 1:
                raise ValueError(
                    f"target callable {type(target).__name__} must return one number (a 0-d tensor) for one "
                    f"image's output, got {type(score).__name__} {tuple(getattr(score, 'shape', ()))}"
                )
            scores.append(score.reshape(()))
        labels = [
            int(getattr(t, "category", -1)) if _is_index(getattr(t, "category", -1)) else -1 for t in targets
        ]
        return TargetScores(torch.stack(scores), torch.tensor(labels, device=output.device))


def _is_index(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def as_target(target: object, num_classes: int | None, model_name: str) -> Target:
    """Turn ``DAAM.__call__``'s ``target`` argument into a ``Target``."""
    if isinstance(target, Target):
        return target
    if (
        callable(target)
        and not isinstance(target, torch.Tensor)
        or (isinstance(target, list | tuple) and target and all(callable(t) for t in target))
    ):
        return OutputTarget(target)  # pytorch-grad-cam's target objects
    if num_classes == 0:
        raise ValueError(
            f"{model_name} has no classifier head (num_classes=0), so there is no class to explain; "
            "use the self-supervised mode, target=KNNTarget(MemoryBank.load(...)) (or a "
            "FeatureWeightTarget), or create the model with a classifier"
        )
    return ClassTarget(target)  # type: ignore[arg-type]  # ClassTarget checks the type at run time
