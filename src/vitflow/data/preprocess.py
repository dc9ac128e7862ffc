"""A model's own preprocessing, and the way back to the pixels the model saw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

#: ImageNet's channel statistics, the default where a model states none
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """``transform``: PIL image -> ``(3, H, W)`` normalised tensor; ``mean``/``std`` undo it."""

    transform: Callable[[Image.Image], torch.Tensor]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    config: dict

    @classmethod
    def for_timm(cls, model: nn.Module) -> Preprocessing:
        """timm's evaluation transform from the model's pretrained data config (input size taken
        from the model itself when it was built for another size)."""
        from timm.data import create_transform, resolve_model_data_config

        config = resolve_model_data_config(model)
        # a model built with another img_size keeps its pretrained config's size; follow the model
        patch_embed = getattr(model, "patch_embed", None)
        img_size = getattr(patch_embed, "img_size", None)
        if img_size is not None and not getattr(model, "dynamic_img_size", False):
            config["input_size"] = (config["input_size"][0], *img_size)
        transform = create_transform(**config, is_training=False)
        return cls(transform, tuple(config["mean"]), tuple(config["std"]), dict(config))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def to_image(self, x: torch.Tensor) -> np.ndarray:
        """``(3, H, W)`` model input -> ``(H, W, 3)`` uint8: exactly the crop the model saw."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        pixels = (x * std + mean).clamp(0, 1)
        return (pixels.permute(1, 2, 0).detach().cpu().numpy() * 255.0).round().astype(np.uint8)
