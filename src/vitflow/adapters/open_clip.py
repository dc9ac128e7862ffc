"""open_clip's ``VisionTransformer`` tower (``model.visual`` of a ViT CLIP model), whose output is
the image embedding: explain it with a ``SimilarityTarget`` (image-text
similarity) or another feature target, or wrap it with text embeddings in a
``TextClassifier`` (zero-shot classification: one logit per text, class targets as for any
classifier)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitflow.adapters.base import Adapter, AttentionSite, Foreign
from vitflow.adapters.mha import MultiheadAttentionSite


class TextClassifier(nn.Module):
    """CLIP zero-shot classification: ``logits = logit_scale * cos(visual(x), text_t)`` for each of
    ``T`` text embeddings; explaining logit ``t`` explains the image-text similarity to text ``t``
    (the same maps as ``SimilarityTarget``, scaled by ``logit_scale``).

    Args:
        visual: the vision tower (``model.visual``).
        text_embeddings: ``(T, D)``, e.g. ``model.encode_text(tokenizer(texts))``.
        logit_scale: CLIP's temperature (100 for the released models).
    """

    def __init__(self, visual: nn.Module, text_embeddings: torch.Tensor, logit_scale: float = 100.0) -> None:
        super().__init__()
        self.visual = visual
        self.text_embeddings: torch.Tensor
        self.register_buffer("text_embeddings", F.normalize(text_embeddings.detach().float(), dim=1))
        self.logit_scale = float(logit_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.visual(x), dim=1)
        return self.logit_scale * image @ self.text_embeddings.to(image.dtype).T  # b t


def _visual(model: nn.Module) -> Foreign:
    """The vision tower: the model itself or a full CLIP model's ``visual``."""
    return getattr(model, "visual", model)


class OpenCLIPAdapter(Adapter):
    model: Foreign

    family = "open_clip"
    library = "open_clip"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        visual = _visual(model)
        return type(visual).__module__.startswith("open_clip.") and hasattr(visual, "transformer")

    def validate(self) -> None:
        visual = _visual(self.model)
        name = type(visual).__name__
        if visual is not self.model and not isinstance(self.model, TextClassifier):
            raise ValueError(
                f"pass the vision tower (model.visual), not the whole {type(self.model).__name__}: "
                "DAAM explains the image embedding"
            )
        pool = getattr(visual, "pool_type", "tok")
        if getattr(visual, "attn_pool", None) is not None or pool != "tok":
            raise ValueError(
                f"{name} pools tokens ({pool}) instead of reading the [class] token; a [class]-token map "
                "would not explain its embedding (method.md section 7)"
            )
        if getattr(visual, "class_embedding", None) is None:
            raise ValueError(f"{name} has no [class] token (method.md section 7)")

    def sites(self) -> Sequence[AttentionSite]:
        visual = _visual(self.model)
        name = type(visual).__name__
        return [
            MultiheadAttentionSite(block.attn, i, name)
            for i, block in enumerate(visual.transformer.resblocks)
        ]

    def prefix_tokens(self) -> int:
        return 1

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        patch = _visual(self.model).patch_size
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        return image_size[0] // patch[0], image_size[1] // patch[1]

    def blocks(self) -> Sequence[nn.Module]:
        return list(_visual(self.model).transformer.resblocks)

    def gradcam_tokens(self, activation: torch.Tensor) -> torch.Tensor:
        if getattr(_visual(self.model).transformer, "batch_first", True):
            return activation
        return activation.transpose(0, 1)  # n b c -> b n c

    def num_classes(self) -> int | None:
        if isinstance(self.model, TextClassifier):
            return self.model.text_embeddings.shape[0]
        return 0  # the output is an embedding
