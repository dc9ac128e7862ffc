"""open_clip's ``VisionTransformer`` tower (``model.visual`` of a ViT CLIP model), whose output is
the image embedding: explain it with a :class:`~vitflow.targets.SimilarityTarget` (image-text
similarity) or another feature target."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from vitflow.adapters.base import Adapter, AttentionSite
from vitflow.adapters.mha import MultiheadAttentionSite


def _visual(model: nn.Module) -> nn.Module:
    """The vision tower: the model itself or a full CLIP model's ``visual``."""
    return getattr(model, "visual", model)


class OpenCLIPAdapter(Adapter):
    family = "open_clip"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        visual = _visual(model)
        return type(visual).__module__.startswith("open_clip.") and hasattr(visual, "transformer")

    def validate(self) -> None:
        visual = _visual(self.model)
        name = type(visual).__name__
        if visual is not self.model:
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

    def num_classes(self) -> int | None:
        return 0  # the output is an embedding
