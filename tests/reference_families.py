"""An independent float64 DAAM for any family: each attention module of a copy of the model is
replaced by an explicit one (full N x N softmax, zero tensor added to the attention output for
the gradient); the maps come from the explicit token-by-channel matrix S. Shares no code with
vitflow's adapters."""

from __future__ import annotations

import copy

import torch
from torch import nn


class _Recorder:
    def __init__(self):
        self.rows, self.values, self.leaves = [], [], []

    def attend(self, q, k, v, scale):
        """q (B, H, Nq, d), k and v (B, H, N, d) -> O (B, Nq, H*d) with a zero leaf added."""
        full = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)  # b h nq n
        out = (full @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
        leaf = torch.zeros_like(out, requires_grad=True)
        self.rows.append(full[:, :, 0].detach())
        self.values.append(v.detach())
        self.leaves.append(leaf)
        return out + leaf


def _heads(x, heads):
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


class _ExplicitProjection(nn.Module):
    """For modules with q_proj/k_proj/v_proj/(o_proj|out_proj) (Hugging Face)."""

    def __init__(self, original, recorder, returns_tuple=True):
        super().__init__()
        self.original, self.recorder, self.returns_tuple = original, recorder, returns_tuple

    def forward(self, hidden_states, *args, **kwargs):
        a = self.original
        heads = a.k_proj.out_features // a.head_dim
        scale = getattr(a, "scaling", None) or a.scale
        q, k, v = (_heads(p(hidden_states), heads) for p in (a.q_proj, a.k_proj, a.v_proj))
        out = self.recorder.attend(q, k, v, scale)
        proj = a.o_proj if hasattr(a, "o_proj") else a.out_proj
        return (proj(out), None) if self.returns_tuple else proj(out)


class _ExplicitMHA(nn.Module):
    def __init__(self, original, recorder):
        super().__init__()
        self.original, self.recorder = original, recorder

    def forward(self, query, key=None, value=None, **kwargs):
        a = self.original
        x = query if a.batch_first else query.transpose(0, 1)
        q, k, v = (
            _heads(t, a.num_heads)
            for t in nn.functional.linear(x, a.in_proj_weight, a.in_proj_bias).chunk(3, -1)
        )
        out = a.out_proj(self.recorder.attend(q, k, v, (a.embed_dim // a.num_heads) ** -0.5))
        return (out if a.batch_first else out.transpose(0, 1)), None


class _ExplicitClassAttention(nn.Module):
    """timm's ClassAttn (CaiT, XCiT): the [class] token queries all tokens."""

    def __init__(self, original, recorder):
        super().__init__()
        self.original, self.recorder = original, recorder

    def forward(self, x):
        a = self.original
        q = _heads(a.q(x[:, :1]), a.num_heads)
        k, v = _heads(a.k(x), a.num_heads), _heads(a.v(x), a.num_heads)
        return a.proj(self.recorder.attend(q, k, v, a.scale))


def _replace(model, predicate, wrapper, recorder):
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if predicate(child):
                setattr(module, child_name, wrapper(child, recorder))


def explicit_maps(model, x, kind, prefix, grid, score_fn, rho="relu", class_attention=None):
    """Float64 per-block maps (B, L, h, w) for ``kind`` in {"hf", "projection", "mha", "class_attention"}.

    ``score_fn(output) -> (B,)`` is the explained score; ``class_attention`` names the attribute
    holding the class-attention blocks.
    """
    model = copy.deepcopy(model).double().eval()
    recorder = _Recorder()
    if kind == "hf":
        projections = ("q_proj", "k_proj", "v_proj")
        _replace(model, lambda m: all(hasattr(m, p) for p in projections), _ExplicitProjection, recorder)
    elif kind == "projection":  # a custom attention module returning a tensor
        projections = ("q_proj", "k_proj", "v_proj")
        wrap = lambda m, r: _ExplicitProjection(m, r, returns_tuple=False)  # noqa: E731
        _replace(model, lambda m: all(hasattr(m, p) for p in projections), wrap, recorder)
    elif kind == "mha":
        _replace(model, lambda m: isinstance(m, nn.MultiheadAttention), _ExplicitMHA, recorder)
    elif kind == "class_attention":
        for block in getattr(model, class_attention):
            block.attn = _ExplicitClassAttention(block.attn, recorder)
    output = model(x.double())
    score = score_fn(output).sum()
    grads = torch.autograd.grad(score, recorder.leaves)
    maps = []
    for row, v, grad in zip(recorder.rows, recorder.values, grads, strict=True):
        batch, heads, tokens, head_dim = v.shape
        S = torch.empty(batch, tokens, heads * head_dim, dtype=torch.float64)
        for c in range(heads * head_dim):
            S[:, :, c] = row[:, c // head_dim] * v[:, c // head_dim, :, c % head_dim]
        coeff = grad[:, 0]
        coeff = coeff.clamp_min(0) if rho == "relu" else coeff
        U = torch.einsum("bnc,bc->bn", S, coeff)
        maps.append(U[:, prefix:].clamp_min(0).reshape(batch, *grid))
    return torch.stack(maps, 1)


def perturb(model, scale=0.05, seed=0):
    """Random init often zeroes heads or embeddings; spread every parameter so maps are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return model.eval()
