"""``torch.nn.MultiheadAttention`` blocks (torchvision's ViT, open_clip's towers).

The module keeps q, k, v and the attention output inside one fused call, so the site reads the
block's input and recomputes the [class] query, the keys and the values from ``in_proj`` (one
extra input projection per block), and reads the output after ``out_proj``; the record maps the
gradient back through ``out_proj`` (``dY/dO = dY/dout W``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitflow.adapters.base import AttentionSite, BlockRecord, Foreign, split_heads


class MultiheadAttentionSite(AttentionSite):
    def __init__(self, module: nn.MultiheadAttention, block_index: int, model_name: str) -> None:
        if not isinstance(module, nn.MultiheadAttention):
            raise NotImplementedError(
                f"{model_name}: block {block_index} uses {type(module).__name__}, not nn.MultiheadAttention; "
                "write a custom adapter for it (README, 'Custom ViTs')"
            )
        if not module._qkv_same_embed_dim or module.in_proj_weight is None:
            raise NotImplementedError(
                f"{model_name}: block {block_index}: separate q/k/v sizes are not supported"
            )
        self.module = module
        self.heads = module.num_heads
        self.batch_first = module.batch_first

    @property
    def scale(self) -> float:
        return float((self.module.embed_dim // self.heads) ** -0.5)

    def output_projection(self) -> nn.Linear | None:
        out = self.module.out_proj
        return out if isinstance(out, nn.Linear) else None

    def install(self, record: BlockRecord) -> list[torch.utils.hooks.RemovableHandle]:
        mha: Foreign = self.module
        heads = self.heads
        record.out_weight, record.out_bias = mha.out_proj.weight, mha.out_proj.bias

        def on_input(_module, args, kwargs):
            if not record.active:
                return
            x = args[0] if args else kwargs["query"]
            x = x if self.batch_first else x.transpose(0, 1)  # b n c
            with torch.no_grad():
                q, k, v = F.linear(x.detach(), mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
            record.value(split_heads(v, heads))
            record.query(split_heads(q, heads))
            record.key(split_heads(k, heads))

        def on_output(_module, _args, output):
            out, weights = output
            out = out if self.batch_first else out.transpose(0, 1)
            out = record.attention_output(out)
            return (out if self.batch_first else out.transpose(0, 1), weights)

        return [
            mha.register_forward_pre_hook(on_input, with_kwargs=True),
            mha.register_forward_hook(on_output),
        ]
