"""Hugging Face transformers ViTs: ViT, DeiT (with or without teacher), DINOv2 (with or without
registers), and the CLIP vision tower.

Their attention modules project queries, keys and values with separate ``nn.Linear`` layers
(``q_proj``, ``k_proj``, ``v_proj``) and the attention output with ``o_proj`` / ``out_proj``,
whatever attention implementation runs in between (SDPA by default, eager, flash): the hooks sit
on those projections, so the implementation is neither read nor changed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from vitflow.adapters.base import Adapter, AttentionSite, Foreign, ProjectionSite

_OUTPUT_PROJECTIONS = ("o_proj", "out_proj")


def _is_attention(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("q_proj", "k_proj", "v_proj")) and any(
        hasattr(module, name) for name in _OUTPUT_PROJECTIONS
    )


class HFAdapter(Adapter):
    """``transformers`` vision transformers whose [class] token is at index 0."""

    model: Foreign

    family = "transformers"
    library = "transformers"
    aliases = ("hf",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return type(model).__module__.startswith("transformers.") and hasattr(model, "config")

    @property
    def _config(self):
        config = self.model.config
        return getattr(config, "vision_config", config)

    def validate(self) -> None:
        name = type(self.model).__name__
        if not any(_is_attention(m) for m in self.model.modules()):
            raise NotImplementedError(
                f"{name}: no attention module with q_proj/k_proj/v_proj found; this transformers model is "
                "not supported yet (write a custom adapter: README, 'Custom ViTs')"
            )
        if name == "Dinov2ForImageClassification":
            warnings.warn(
                "Dinov2ForImageClassification's classifier reads the [class] token and the mean of the patch "
                "tokens; DAAM explains the part of the decision that passes through the [class] token's "
                "attention (method.md section 7)",
                stacklevel=3,
            )

    def sites(self) -> Sequence[AttentionSite]:
        sites = []
        for module in self.model.modules():
            if not _is_attention(module):
                continue
            out = next(getattr(module, n) for n in _OUTPUT_PROJECTIONS if hasattr(module, n))
            heads = getattr(module, "num_attention_heads", None) or getattr(module, "num_heads", None)
            if heads is None:
                heads = module.k_proj.out_features // module.head_dim
            scale = getattr(module, "scaling", None) or getattr(module, "scale", None)
            sites.append(
                ProjectionSite(module, module.q_proj, module.k_proj, module.v_proj, out, heads, scale)
            )
        return sites

    def prefix_tokens(self) -> int:
        config = self._config
        distillation = 1 if "DeiT" in type(self.model).__name__ else 0
        return 1 + distillation + int(getattr(config, "num_register_tokens", 0) or 0)

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        patch = self._config.patch_size
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        return image_size[0] // patch[0], image_size[1] // patch[1]

    def num_classes(self) -> int | None:
        if any(hasattr(self.model, head) for head in ("classifier", "cls_classifier")):
            return int(self.model.config.num_labels)
        return 0  # a backbone: its output is a feature (pooler output or projected embedding)

    def logits(self, output: object) -> torch.Tensor:
        for field in ("logits", "image_embeds", "pooler_output"):
            value = getattr(output, field, None)
            if isinstance(value, torch.Tensor) and value.ndim == 2:
                return value
        return super().logits(output)
