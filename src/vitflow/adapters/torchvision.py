"""torchvision's ``VisionTransformer`` (``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ...): encoder
layers with ``nn.MultiheadAttention``, a [class] token, and a head on that token."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from vitflow.adapters.base import Adapter, AttentionSite, Foreign
from vitflow.adapters.mha import MultiheadAttentionSite


class TorchvisionAdapter(Adapter):
    model: Foreign

    family = "torchvision"
    library = "torchvision"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return type(model).__module__.startswith("torchvision.") and hasattr(model, "encoder")

    def sites(self) -> Sequence[AttentionSite]:
        name = type(self.model).__name__
        return [
            MultiheadAttentionSite(layer.self_attention, i, name)
            for i, layer in enumerate(self.model.encoder.layers)
        ]

    def blocks(self) -> Sequence[nn.Module]:
        return list(self.model.encoder.layers)

    def prefix_tokens(self) -> int:
        return 1

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        patch = self.model.patch_size
        return image_size[0] // patch, image_size[1] // patch

    def num_classes(self) -> int | None:
        head = getattr(self.model.heads, "head", None)
        return head.out_features if isinstance(head, nn.Linear) else None
