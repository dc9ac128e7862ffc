"""LeGrad (Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via
Feature Formation Sensitivity", ICCV 2025).

Every block ``l`` is read out as if it were the last (the model's own final normalisation,
pooling and head on its output tokens: ``Adapter.readout``), giving a score ``s_l`` for the
explained target (the class the whole model explains). Its gradient with respect to the
block's attention probabilities ``A_l`` ``(H, N, N)``, kept where positive, averaged over heads
and over query rows, is that block's relevance of each token; the relevances are summed over the
blocks from ``layer_index`` on (``-2``: the last two, the default of the authors' package
``legrad-torch``) and the patch tokens' sum is min-max normalised once, at the end. One forward
pass and one gradient call per block; fused attention stays on (``dS/dA = (dS/dO) v^T`` per head, with
``O = A v`` the block's attention output, as the attention trace forms it).
"""

from __future__ import annotations

import torch
from torch import nn

from vitflow.adapters import resolve_adapter
from vitflow.adapters.base import split_heads
from vitflow.core.maps import minmax
from vitflow.explainer.capture import Capture
from vitflow.methods.inputs import MethodInputs
from vitflow.methods.trace import FullBlockRecord
from vitflow.registry import register_method
from vitflow.targets.classes import ClassTarget


def legrad_relevance(model: nn.Module, x: torch.Tensor, target: object = None, adapter=None) -> torch.Tensor:
    """``(B, L, N)`` each block's token relevance (before the sum over blocks and the
    normalisation); ``target`` as for ``DAAM``."""
    outputs: list[torch.Tensor] = []

    def keep(_module, _args, out):
        outputs.append(out[0] if isinstance(out, tuple) else out)

    with Capture(model, adapter=adapter, record_type=FullBlockRecord) as capture:
        adapter = capture.adapter
        blocks = adapter.blocks()
        if not adapter.has_readout():
            adapter.readout(x)  # raises, naming the model
        if not adapter.full_attention() or len(blocks) != len(capture.records):
            name = type(adapter.model).__name__
            raise ValueError(f"{name}: LeGrad needs token-to-token attention in every block")
        handles = [block.register_forward_hook(keep) for block in blocks]
        try:
            with capture.open_pass(x, target) as (_, logits, explained):
                final = explained(logits)
                # every block explains the class the whole model explains, not its own argmax
                per_block = ClassTarget(final.target) if isinstance(explained, ClassTarget) else explained
                relevance = []
                for record, tokens in zip(capture.records, outputs, strict=True):
                    assert isinstance(record, FullBlockRecord) and record.output is not None
                    assert record.v is not None
                    score = per_block(adapter.readout(tokens)).scores.sum()
                    (grad,) = torch.autograd.grad(score, [record.output], retain_graph=True)
                    if record.out_weight is not None:  # hooked after the output projection
                        grad = grad @ record.out_weight.to(grad.dtype)
                    work = torch.promote_types(record.v.dtype, torch.float32)
                    v = record.v.to(work)
                    grad_a = split_heads(grad.detach().to(work), v.shape[1]) @ v.transpose(-1, -2)  # b h n n
                    relevance.append(grad_a.clamp_min(0).mean(dim=(1, 2)))
        finally:
            for handle in handles:
                handle.remove()
    return torch.stack(relevance, dim=1)


#: the first block LeGrad sums (``legrad-torch``'s ``layer_index``: the last two blocks)
LAYER_INDEX = -2


def legrad(
    model: nn.Module, x: torch.Tensor, target: object = None, adapter=None, layer_index: int = LAYER_INDEX
) -> torch.Tensor:
    """``(B, h, w)`` LeGrad maps in [0, 1], the blocks from ``layer_index`` on (0: all of them)."""
    relevance = legrad_relevance(model, x, target, adapter)
    resolved = resolve_adapter(model, adapter)
    prefix, grid = resolved.prefix_tokens(), resolved.grid((x.shape[-2], x.shape[-1]))
    blocks = relevance.shape[1]
    start = layer_index if layer_index >= 0 else max(blocks + layer_index, 0)
    patches = relevance[:, start:].sum(dim=1)[:, prefix:]
    return minmax(patches).reshape(len(x), *grid)


@register_method("legrad", full_attention=True, readout=True)
def _legrad(inputs: MethodInputs) -> torch.Tensor:
    """LeGrad (Bousselham et al. 2025): the last two blocks read out, positive dS/dA summed."""
    return legrad(inputs.adapter.model, inputs.x, inputs.target, adapter=inputs.adapter)
