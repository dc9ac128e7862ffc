"""timm Vision Transformers (``timm.models.vision_transformer.VisionTransformer`` and subclasses:
ViT, DeiT, distilled DeiT, DINO/DINOv2 with or without registers, CLIP towers, qk-norm ViTs).

timm's ``Attention`` computes ``qkv -> (q_norm, k_norm) -> SDPA -> norm -> proj``. The hooks read
the values from the ``qkv`` output, the query and keys from the outputs of ``q_norm`` / ``k_norm``
(identity modules when the model has no q/k norm, so the hook point always exists), and the
attention output at the input of ``norm`` (the identity unless ``scale_norm``), which is the
input of ``proj`` for every standard model. ``fused_attn`` is never touched.

Class-attention models (CaiT, XCiT) process the patches first without a [class] token (CaiT:
self-attention among patches; XCiT: cross-covariance attention, which mixes channels, not
tokens) and add the [class] token in two final class-attention blocks, where it queries every
token. Those blocks are the ones with a [class] attention row, so they are the blocks that give
maps: the attention flow of these models has two steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vitflow.adapters.base import Adapter, AttentionSite, BlockRecord, ProjectionSite

_POOL_HELP = (
    "DAAM explains the decision through the [class] token, and this model's classifier reads "
    "{what}; a [class]-token map would not explain its output (method.md section 7). Use a "
    "[class]-token model (global_pool='token')"
)


class TimmAttentionSite(AttentionSite):
    """A timm ``Attention`` module with a fused ``qkv`` projection."""

    def __init__(self, module: nn.Module, block_index: int, model_name: str) -> None:
        required = ("qkv", "q_norm", "k_norm", "proj", "num_heads")
        missing = [name for name in required if not hasattr(module, name)]
        if missing:
            raise NotImplementedError(
                f"{model_name}: block {block_index} uses {type(module).__name__}, which has no "
                f"{', '.join(missing)}; vitflow's timm adapter supports attention with a fused qkv "
                "projection. Write a custom adapter for this model (README, 'Custom ViTs')."
            )
        self.module = module
        self.heads = int(module.num_heads)
        self.head_dim = int(getattr(module, "head_dim", module.qkv.out_features // 3 // self.heads))

    @property
    def scale(self) -> float:
        return float(getattr(self.module, "scale", self.head_dim**-0.5))

    def install(self, record: BlockRecord) -> list[torch.utils.hooks.RemovableHandle]:
        attn = self.module
        heads, head_dim = self.heads, self.head_dim

        def on_qkv(_module, _args, out):
            batch, tokens, _ = out.shape
            # (B, N, 3*H*d) -> values "b h n d"
            record.value(out.reshape(batch, tokens, 3, heads, head_dim)[:, :, 2].permute(0, 2, 1, 3))

        def on_output(_module, args):
            return (record.attention_output(args[0]), *args[1:])

        output_point = attn.norm if isinstance(getattr(attn, "norm", None), nn.Module) else attn.proj
        return [
            attn.qkv.register_forward_hook(on_qkv),
            attn.q_norm.register_forward_hook(lambda _m, _a, q: record.query(q)),
            attn.k_norm.register_forward_hook(lambda _m, _a, k: record.key(k)),
            output_point.register_forward_pre_hook(on_output),
        ]


class TimmAdapter(Adapter):
    """timm ``VisionTransformer`` family."""

    family = "timm"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return type(model).__module__.startswith("timm.") and hasattr(model, "blocks")

    @property
    def _name(self) -> str:
        return type(self.model).__name__

    def validate(self) -> None:
        model = self.model
        if getattr(model, "cls_token", None) is None:
            raise ValueError(f"{self._name} has no [class] token. " + _POOL_HELP.format(what="patch tokens"))
        if getattr(model, "attn_pool", None) is not None:
            raise ValueError(
                f"{self._name} pools tokens with an attention-pooling head (global_pool='map'). "
                + _POOL_HELP.format(what="the attention-pooled tokens")
            )
        pool = getattr(model, "global_pool", "token")
        if pool != "token":
            raise ValueError(
                f"{self._name} uses global_pool={pool!r}. "
                + _POOL_HELP.format(what=f"{pool}-pooled patch tokens")
            )

    def class_attention_blocks(self) -> Sequence[nn.Module] | None:
        """CaiT's ``blocks_token_only`` / XCiT's ``cls_attn_blocks``, where the [class] token attends."""
        for name in ("blocks_token_only", "cls_attn_blocks"):
            blocks = getattr(self.model, name, None)
            if blocks is not None:
                return blocks
        return None

    def sites(self) -> Sequence[AttentionSite]:
        class_blocks = self.class_attention_blocks()
        if class_blocks is not None:
            # CaiT and XCiT add the [class] token only after the patch-only blocks (self-attention
            # among patches in CaiT, cross-covariance attention in XCiT, neither with a [class]
            # row); the class-attention blocks are the ones whose [class] output DAAM decomposes.
            return [
                ProjectionSite(
                    b.attn, b.attn.q, b.attn.k, b.attn.v, b.attn.proj, b.attn.num_heads, b.attn.scale
                )
                for b in class_blocks
            ]
        return [TimmAttentionSite(block.attn, i, self._name) for i, block in enumerate(self.model.blocks)]

    def full_attention(self) -> bool:
        return self.class_attention_blocks() is None

    def blocks(self) -> Sequence[nn.Module]:
        class_blocks = self.class_attention_blocks()
        return list(class_blocks if class_blocks is not None else self.model.blocks)

    def prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 1))

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        patch_embed = self.model.patch_embed
        if hasattr(patch_embed, "dynamic_feat_size"):
            return tuple(patch_embed.dynamic_feat_size(image_size))
        patch = patch_embed.patch_size
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        return image_size[0] // patch[0], image_size[1] // patch[1]

    def num_classes(self) -> int | None:
        return getattr(self.model, "num_classes", None)
