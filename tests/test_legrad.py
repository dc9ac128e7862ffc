"""LeGrad (Bousselham et al., ICCV 2025) against an independent float64 restatement that runs a
timm ViT block by block with its attention probabilities formed explicitly, reads every block
out through the model's own tail, and differentiates each block's score with respect to that
block's attention matrix directly (no closed form, no hooks)."""

from __future__ import annotations

import pytest
import torch
from models import make_timm

from vitflow.adapters import resolve_adapter
from vitflow.core.maps import minmax
from vitflow.methods.legrad import legrad, legrad_relevance
from vitflow.methods.run import applicable_methods


def _reference(model, x, target):
    """LeGrad by hand: explicit attention per block, ``autograd.grad(s_l, A_l)``."""
    tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    states, attentions = [], []
    for block in model.blocks:
        attn = block.attn
        b, n, c = tokens.shape
        qkv = attn.qkv(block.norm1(tokens)).reshape(b, n, 3, attn.num_heads, c // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        a = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
        attentions.append(a)
        out = (a @ v).transpose(1, 2).reshape(b, n, c)
        out = attn.proj(getattr(attn, "norm", torch.nn.Identity())(out))
        tokens = tokens + block.ls1(out)
        tokens = tokens + block.ls2(block.mlp(block.norm2(tokens)))
        states.append(tokens)
    final = model.forward_head(model.norm(tokens))
    torch.testing.assert_close(final, model(x))  # the restatement is the model
    rows = torch.arange(len(x))
    relevance = []
    for state, a in zip(states, attentions, strict=True):
        score = model.forward_head(model.norm(state))[rows, target].sum()
        (grad,) = torch.autograd.grad(score, [a], retain_graph=True)
        relevance.append(grad.clamp_min(0).mean(dim=(1, 2)))
    return torch.stack(relevance, dim=1)


def test_legrad_equals_the_explicit_float64_restatement():
    torch.manual_seed(0)
    model = make_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=7).double().eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([1, 4, 6])
    expected = _reference(model, x, target)
    ours = legrad_relevance(model, x, target)
    assert ours.shape == (3, len(model.blocks), 17)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-14)
    maps = legrad(model, x, target)  # legrad-torch's default: the last two blocks
    torch.testing.assert_close(maps, minmax(expected[:, -2:].sum(1)[:, 1:]).reshape(3, 4, 4))
    every = legrad(model, x, target, layer_index=0)
    torch.testing.assert_close(every, minmax(expected.sum(1)[:, 1:]).reshape(3, 4, 4))
    assert maps.amin() == 0 and (maps.flatten(1).amax(1) == 1).all() and not torch.equal(maps, every)
    # the model's own predicted class by default; every block explains it, not its own argmax
    predicted = model(x).argmax(1)
    torch.testing.assert_close(legrad_relevance(model, x), _reference(model, x, predicted))
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was


def test_legrad_is_left_out_where_no_readout_exists():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    ).eval()
    kept, notes = applicable_methods(resolve_adapter(model), ["daam", "legrad"])
    assert kept == ["daam"] and "legrad left out: vitflow cannot read VisionTransformer's output" in notes[0]
    with pytest.raises(NotImplementedError, match="cannot read the output from an intermediate block"):
        legrad(model, torch.randn(1, 3, 32, 32))
    timm_model = make_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3)
    assert applicable_methods(resolve_adapter(timm_model), ["daam", "legrad"]) == (["daam", "legrad"], [])
