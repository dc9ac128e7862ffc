"""timm Vision Transformers (``timm.models.vision_transformer.VisionTransformer`` and subclasses:
ViT, DeiT, distilled DeiT, DINO/DINOv2 with or without registers, CLIP towers, qk-norm ViTs).

timm's ``Attention`` computes ``qkv -> (q_norm, k_norm) -> SDPA -> norm -> proj``. The hooks read
the values from the ``qkv`` output, the query and keys from the outputs of ``q_norm`` / ``k_norm``
(identity modules when the model has no q/k norm, so the hook point always exists), and the
attention output at the input of ``norm`` (the identity unless ``scale_norm``), which is the
input of ``proj`` for every standard model. ``fused_attn`` is never touched.

BEiT (relative position bias added to the attention logits, q/v biases applied with
``F.linear``), EVA / EVA02 / DINOv3 (rotary embedding of q and k, optional grouped keys), and
timm's relative-position ViTs form q, k or the attention bias inside their forward, out of reach
of hooks on submodules. ``TimmRecomputeSite`` reads the module's input and forms the [class]
row itself with the module's own parameters, position bias and rotation (O(N*C^2) extra work per
block for k and v; the N x N matrix is still never formed); the run-time decomposition check
compares its row and values with the module's own output.

Class-attention models (CaiT, XCiT) process the patches first without a [class] token (CaiT:
self-attention among patches; XCiT: cross-covariance attention, which mixes channels, not
tokens) and add the [class] token in two final class-attention blocks, where it queries every
token. Those blocks are the ones with a [class] attention row, so they are the blocks that give
maps: the attention flow of these models has two steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitflow.adapters.base import Adapter, AttentionSite, BlockRecord, Foreign, ProjectionSite

_POOL_HELP = (
    "DAAM explains the decision through the [class] token, and this model's classifier reads "
    "{what}; a [class]-token map would not explain its output (method.md section 7). Use a "
    "[class]-token model (global_pool='token')"
)


class TimmAttentionSite(AttentionSite):
    """A timm ``Attention`` module with a fused ``qkv`` projection."""

    module: Foreign

    def __init__(self, module: Foreign, block_index: int, model_name: str) -> None:
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

    def output_projection(self) -> nn.Linear | None:
        return timm_output_projection(self.module)

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


# forward keyword arguments that change the attention matrix (position bias, rotation, mask)
_ATTENTION_KWARGS = ("rope", "shared_rel_pos_bias", "shared_rel_pos", "attn_mask")


def timm_output_projection(module: nn.Module) -> nn.Linear | None:
    """``proj`` when nothing but it lies between the attention output and the residual stream
    (a LayerNorm before ``proj``, as in scale-norm models, is not linear per contribution)."""
    norm, proj = getattr(module, "norm", None), getattr(module, "proj", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        return None
    return proj if isinstance(proj, nn.Linear) else None


def _needs_recompute(module: nn.Module) -> bool:
    """Whether q, k or the attention bias of this timm attention module is formed outside the
    submodules the plain site hooks."""
    if any(
        getattr(module, a, None) is not None for a in ("q_bias", "relative_position_bias_table", "rel_pos")
    ):
        return True
    if getattr(module, "qkv", None) is None:
        return True
    params = inspect.signature(module.forward).parameters
    return any(name in params for name in _ATTENTION_KWARGS[:3])


class TimmRecomputeSite(AttentionSite):
    """A timm attention module whose [class] attention row the site forms from the module's input:
    BEiT, EVA / EVA02 / DINOv3 (``EvaAttention``, ``AttentionRope``), ``RelPosAttention``."""

    module: Foreign

    def __init__(self, module: Foreign, block_index: int, model_name: str) -> None:
        has_qkv = getattr(module, "qkv", None) is not None
        has_split = all(getattr(module, p, None) is not None for p in ("q_proj", "k_proj", "v_proj"))
        if not (has_qkv or has_split) or not hasattr(module, "proj"):
            raise NotImplementedError(
                f"{model_name}: block {block_index} uses {type(module).__name__}, whose q, k and v "
                "projections vitflow does not know; write a custom adapter (README, 'Custom ViTs')"
            )
        if getattr(module, "rel_pos", None) is not None and not hasattr(module.rel_pos, "get_bias"):
            raise NotImplementedError(
                f"{model_name}: block {block_index}'s relative position module "
                f"{type(module.rel_pos).__name__} has no get_bias(); write a custom adapter"
            )
        self.module = module
        self.heads = int(module.num_heads)
        self.kv_heads = int(getattr(module, "num_kv_heads", None) or self.heads)
        width = module.qkv.out_features // 3 if has_qkv else module.q_proj.out_features
        self.head_dim = int(getattr(module, "head_dim", None) or width // self.heads)
        self._kwargs: dict = {}

    @property
    def scale(self) -> float:
        return float(getattr(self.module, "scale", self.head_dim**-0.5))

    def output_projection(self) -> nn.Linear | None:
        return timm_output_projection(self.module)

    def _projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The [class] query ``(B, H, 1, d)``, keys and values ``(B, H_kv, N, d)`` before norms."""
        m, batch, tokens = self.module, x.shape[0], x.shape[1]
        if getattr(m, "qkv", None) is not None:
            weight, bias = m.qkv.weight, m.qkv.bias
            if getattr(m, "q_bias", None) is not None:  # BEiT / EVA: k has no bias
                bias = torch.cat((m.q_bias, m.k_bias, m.v_bias))
            width = weight.shape[0] // 3
            q_bias = None if bias is None else bias[:width]
            kv_bias = None if bias is None else bias[width:]
            q = F.linear(x[:, :1], weight[:width], q_bias)
            kv = F.linear(x, weight[width:], kv_bias).reshape(batch, tokens, 2, self.heads, self.head_dim)
            k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        else:
            q = m.q_proj(x[:, :1])
            k = m.k_proj(x).reshape(batch, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
            v = m.v_proj(x).reshape(batch, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        return q.reshape(batch, 1, self.heads, self.head_dim).transpose(1, 2), k, v

    def _bias_row(self, tokens: int) -> torch.Tensor | None:
        """The [class] row ``(1|B, H, N)`` of everything the module adds to the logits."""
        m, kwargs, rows = self.module, self._kwargs, []

        def class_row(bias: torch.Tensor) -> torch.Tensor:  # (..., N, N) -> (1|B, H|1, N)
            row = bias[..., 0, :]
            return row.reshape(1, 1, -1) if row.ndim == 1 else row[None] if row.ndim == 2 else row

        if getattr(m, "relative_position_bias_table", None) is not None:
            rows.append(class_row(m._get_rel_pos_bias()))
        if getattr(m, "rel_pos", None) is not None:
            rows.append(class_row(m.rel_pos.get_bias()))
        for name in ("shared_rel_pos_bias", "shared_rel_pos"):
            shared = kwargs.get(name)
            # RelPosAttention uses the shared bias only when it has none of its own
            if shared is not None and not (
                name == "shared_rel_pos" and getattr(m, "rel_pos", None) is not None
            ):
                rows.append(class_row(shared))
        mask = kwargs.get("attn_mask")
        if mask is not None:
            row = class_row(mask)
            rows.append(torch.zeros(row.shape, device=row.device).masked_fill(~row, float("-inf"))
                        if row.dtype == torch.bool else row)  # fmt: skip
        if kwargs.get("is_causal"):
            raise NotImplementedError(
                "causal attention has no [class] row over the image; DAAM does not apply"
            )
        if not rows:
            return None
        total = rows[0]
        for row in rows[1:]:
            total = total + row
        return total

    def _record(self, record: BlockRecord, x: torch.Tensor) -> None:
        m = self.module
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            work = torch.promote_types(x.dtype, torch.float32)
            q, k, v = self._projections(x)
            q, k = m.q_norm(q) if hasattr(m, "q_norm") else q, m.k_norm(k) if hasattr(m, "k_norm") else k
            q, k, v = q.to(work), k.to(work), v.to(work)
            rope = self._kwargs.get("rope")
            if rope is not None:
                from timm.layers import apply_rot_embed_cat

                npt = int(getattr(m, "num_prefix_tokens", 1))
                half = bool(getattr(m, "rotate_half", False))
                k = torch.cat(
                    [k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half).to(work)], 2
                )
            if self.kv_heads != self.heads:
                groups = self.heads // self.kv_heads
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            logits = torch.einsum("bhd,bhnd->bhn", q[:, :, 0], k) * self.scale
            bias = self._bias_row(k.shape[2])
            if bias is not None:
                logits = logits + bias.to(work)
            record.row_and_values(logits.softmax(dim=-1), v)

    def install(self, record: BlockRecord) -> list[torch.utils.hooks.RemovableHandle]:
        attn = self.module

        def on_input(_module, args, kwargs):
            if record.active:
                self._kwargs = kwargs
                x = args[0] if args else kwargs["x"]
                try:
                    self._record(record, x)
                finally:
                    self._kwargs = {}

        def on_output(_module, args):
            return (record.attention_output(args[0]), *args[1:])

        output_point = attn.norm if isinstance(getattr(attn, "norm", None), nn.Module) else attn.proj
        return [
            attn.register_forward_pre_hook(on_input, with_kwargs=True),
            output_point.register_forward_pre_hook(on_output),
        ]


class TimmAdapter(Adapter):
    """timm ``VisionTransformer`` family."""

    model: Foreign

    family = "timm"
    library = "timm"

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

    def class_attention_blocks(self) -> Sequence[Foreign] | None:
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
        sites = []
        for i, block in enumerate(self.model.blocks):
            attn = getattr(block, "attn", None)
            if not isinstance(attn, nn.Module):
                raise NotImplementedError(
                    f"{self._name}: block {i} ({type(block).__name__}) has no 'attn' module; vitflow's timm "
                    "adapter reads ViT-style blocks. Write a custom adapter (README, 'Custom ViTs')"
                )
            site = TimmRecomputeSite if _needs_recompute(attn) else TimmAttentionSite
            sites.append(site(attn, i, self._name))
        return sites

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

    def has_readout(self) -> bool:
        model = self.model
        tail = hasattr(model, "forward_head") and hasattr(model, "norm")
        return self.class_attention_blocks() is None and tail

    def readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """timm's own tail: ``forward_head(norm(tokens))`` (pooling, ``fc_norm``, head)."""
        if not self.has_readout():
            return super().readout(tokens)
        return self.logits(self.model.forward_head(self.model.norm(tokens)))
