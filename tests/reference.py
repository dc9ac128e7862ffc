"""An independent float64 DAAM for timm ViTs that builds every attention matrix explicitly.

It re-runs the model's blocks by hand (full N x N softmax attention, the explicit token-by-channel
contribution matrix S, the gradient read from a zero tensor added to the whole attention output)
and shares no code with vitflow. Used as the ground truth the engine is compared to.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch


@dataclass
class Reference:
    block_maps: torch.Tensor  # (B, L, h, w)
    relevance: torch.Tensor  # (B, L, N)
    logits: torch.Tensor  # (B, K)
    target: torch.Tensor  # (B,)
    identity_error: float  # max |sum_j S[j] - O[0]| over blocks
    attention: list[torch.Tensor] | None = None  # (B, H, N, N) per block, explicit softmax
    attention_grad: list[torch.Tensor] | None = None  # dY/dA per block, by autograd
    token_relevance: torch.Tensor | None = None  # (B, N) CP-LRP input x gradient entering block 1
    pixel_relevance: torch.Tensor | None = None  # (B, H, W) CP-LRP input x gradient at the pixels
    block_inputs: list[torch.Tensor] | None = None  # (B, N, C) the residual stream entering each block
    written: list[torch.Tensor] | None = None  # (B, N, C) W_o v_j: each token's value, projected


def _layer_norm(module, x, cp_lrp):
    """``module`` (a LayerNorm) written out; with ``cp_lrp`` its standard deviation is a constant."""
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean).pow(2).mean(-1, keepdim=True) + module.eps).sqrt()
    return (x - mean) / (std.detach() if cp_lrp else std) * module.weight + module.bias


def _gelu(x, cp_lrp):
    """GELU; with ``cp_lrp`` the identity rule: the value f(x), the gradient f(x) / (x + 1e-10)."""
    y = torch.nn.functional.gelu(x)
    if not cp_lrp:
        return y
    ratio = (y / (x + 1e-10)).detach()
    return x * ratio + (y - x * ratio).detach()


def reference_daam(
    model, x, target=None, rho="relu", prefix_tokens=None, grid=None, score_fn=None, cp_lrp=False
) -> Reference:
    """``score_fn(output) -> (B,)`` replaces the class logit (feature targets); ``target`` is then
    unused. ``cp_lrp``: the gradient is CP-LRP's (query and key, LayerNorm's standard deviation
    detached, GELU by the identity rule; plain timm ViT blocks only); ``token_relevance`` is then
    input x gradient at the tokens entering the first block."""
    model = copy.deepcopy(model).double()
    x = x.double()
    batch = x.shape[0]
    tokens = model.patch_embed(x)
    tokens = model._pos_embed(tokens)
    tokens = model.norm_pre(model.patch_drop(tokens))
    n_tokens = tokens.shape[1]
    entering = tokens.detach().requires_grad_(cp_lrp)
    tokens = entering if cp_lrp else tokens
    norm = (lambda m, t: _layer_norm(m, t, True)) if cp_lrp else (lambda m, t: m(t))

    def mlp(block, t):
        if not cp_lrp:
            return block.mlp(t)
        return block.mlp.fc2(block.mlp.norm(_gelu(block.mlp.fc1(t), True)))

    zero_leaves, class_rows, values, outputs, fulls, block_inputs, written = [], [], [], [], [], [], []
    for blk in model.blocks:
        attn = blk.attn
        block_inputs.append(tokens.detach())
        heads, head_dim = attn.num_heads, attn.head_dim
        h = norm(blk.norm1, tokens)
        qkv = attn.qkv(h).reshape(batch, n_tokens, 3, heads, head_dim)
        q = attn.q_norm(qkv[:, :, 0].transpose(1, 2))  # b h n d
        k = attn.k_norm(qkv[:, :, 1].transpose(1, 2))
        if cp_lrp:  # no gradient through the softmax
            q, k = q.detach(), k.detach()
        v = qkv[:, :, 2].transpose(1, 2)
        full = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * attn.scale, dim=-1)  # b h n n
        fulls.append(full)
        out = torch.matmul(full, v).transpose(1, 2).reshape(batch, n_tokens, heads * head_dim)
        leaf = torch.zeros_like(out, requires_grad=True)
        out = out + leaf
        tokens = tokens + blk.drop_path1(blk.ls1(attn.proj(attn.norm(out))))
        tokens = tokens + blk.drop_path2(blk.ls2(mlp(blk, norm(blk.norm2, tokens))))
        zero_leaves.append(leaf)
        class_rows.append(full[:, :, 0, :].detach())
        values.append(v.detach())
        joined = torch.cat([v[:, head] for head in range(heads)], dim=-1)  # b n (h d), head by head
        written.append(torch.einsum("bnc,oc->bno", joined, attn.proj.weight).detach())
        outputs.append(out[:, 0].detach())
    logits = model.forward_head(norm(model.norm, tokens))
    if score_fn is not None:
        labels = torch.full((batch,), -1)
        score = score_fn(logits).sum()
    else:
        if target is None:
            labels = logits.argmax(1)
        elif isinstance(target, int):
            labels = torch.as_tensor(target).long().expand(batch)
        else:
            labels = torch.as_tensor(target)
        score = logits[torch.arange(batch), labels].sum()
    wrt = zero_leaves + ([entering] if cp_lrp else fulls)
    everything = torch.autograd.grad(score, wrt)
    grads, attention_grads = everything[: len(zero_leaves)], everything[len(zero_leaves) :]
    token_relevance = pixel_relevance = None
    if cp_lrp:
        token_relevance = (entering.detach() * attention_grads[0]).sum(-1)
        # the entering tokens are a linear function of the pixels (patch embedding, position
        # embedding): their gradient carried back through that function, in float64
        pixels = x.detach().clone().requires_grad_(True)
        embedded = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(pixels))))
        (pixel_grad,) = torch.autograd.grad(embedded, pixels, grad_outputs=attention_grads[0])
        pixel_relevance = (x.detach() * pixel_grad).sum(1)
    if cp_lrp:
        attention_grads = ()

    prefix = model.num_prefix_tokens if prefix_tokens is None else prefix_tokens
    if grid is None:
        patch = model.patch_embed.patch_size
        grid = (x.shape[-2] // patch[0], x.shape[-1] // patch[1])
    maps, relevances, identity_error = [], [], 0.0
    for row, v, grad, out in zip(class_rows, values, grads, outputs, strict=True):
        heads, head_dim = v.shape[1], v.shape[3]
        channels = heads * head_dim
        # S[b, j, c] = A^{h(c)}[0, j] * v[b, j, c], channel by channel
        S = torch.empty(batch, n_tokens, channels, dtype=torch.float64)
        for c in range(channels):
            head = c // head_dim
            S[:, :, c] = row[:, head, :] * v[:, head, :, c % head_dim]
        identity_error = max(identity_error, float((S.sum(1) - out).abs().max()))
        coeff = grad[:, 0]
        coeff = coeff.clamp_min(0) if rho == "relu" else coeff
        U = torch.einsum("bnc,bc->bn", S, coeff)
        relevances.append(U)
        maps.append(U[:, prefix:].clamp_min(0).reshape(batch, *grid))
    return Reference(
        block_maps=torch.stack(maps, 1),
        relevance=torch.stack(relevances, 1),
        logits=logits.detach(),
        target=labels,
        identity_error=identity_error,
        attention=[f.detach() for f in fulls],
        attention_grad=[g.detach() for g in attention_grads] or None,
        token_relevance=token_relevance,
        pixel_relevance=pixel_relevance,
        block_inputs=block_inputs,
        written=written,
    )


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(-2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - lo) / (hi - lo)).reshape(m.shape)


def agreed_with_rollout(
    relevance: torch.Tensor, attention: list, prefix: int, grid: tuple[int, int]
) -> torch.Tensor:
    """``daam_lrp_x_rollout``'s flow written out: after each block, the geometric mean of the
    accumulated positive token relevance on its own patch and the same relevance carried to the
    input patches by rollout (``0.5 * mean attention + 0.5 * I``, rows normalised), each min-max
    normalised. ``relevance`` ``(B, L, N)``; ``attention[b]`` ``(B, heads, N, N)``."""
    batch, blocks, tokens = relevance.shape
    eye = torch.eye(tokens, dtype=torch.float64)
    expected = torch.empty(batch, blocks, *grid, dtype=torch.float64)
    for i in range(batch):
        m = eye.clone()
        own, carried = torch.zeros(tokens, dtype=torch.float64), torch.zeros(tokens, dtype=torch.float64)
        for b in range(blocks):
            u = relevance[i, b]
            own = own + u.clamp_min(0)
            carried = carried + u.clamp_min(0) @ m
            step = 0.5 * attention[b][i].mean(0) + 0.5 * eye
            m = (step / step.sum(-1, keepdim=True)) @ m
            agreement = _minmax(own[prefix:].reshape(grid)) * _minmax(carried[prefix:].reshape(grid))
            expected[i, b] = agreement.sqrt()
    return expected


def _bilinear_matrix(out: int, size: int) -> torch.Tensor:
    """``(out, size)``: bilinear interpolation with half-pixel centres, written out row by row."""
    matrix = torch.zeros(out, size, dtype=torch.float64)
    for i in range(out):
        source = max((i + 0.5) * size / out - 0.5, 0.0)
        low = int(source)
        high = min(low + 1, size - 1)
        matrix[i, low] += 1 - (source - low)
        matrix[i, high] += source - low
    return matrix


def _gaussian_matrix(size: int, sigma: float) -> torch.Tensor:
    """``(size, size)``: a Gaussian of ``sigma`` truncated at ``int(3 sigma)``, the edges reflected
    (index ``-t`` reads ``t``, index ``size - 1 + t`` reads ``size - 1 - t``)."""
    radius = max(1, int(3 * sigma))
    taps = [math.exp(-(t * t) / (2 * sigma * sigma)) for t in range(-radius, radius + 1)]
    total = sum(taps)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):
        for t, weight in zip(range(-radius, radius + 1), taps, strict=True):
            j = i + t
            j = -j if j < 0 else (2 * (size - 1) - j if j > size - 1 else j)
            matrix[i, j] += weight / total
    return matrix


def guided_reference(patch_map: torch.Tensor, pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """``daam_lrp_guided`` for one image written out: ``(h, w)`` map bilinearly at the ``(H, W)``
    pixels, times the positive pixel relevance smoothed by explicit Gaussian matrices, each min-max
    normalised."""
    (h, w), (height, width) = patch_map.shape, pixels.shape
    up = _bilinear_matrix(height, h) @ patch_map.double() @ _bilinear_matrix(width, w).T
    smooth = _gaussian_matrix(height, sigma) @ pixels.double().clamp_min(0) @ _gaussian_matrix(width, sigma).T
    return _minmax(up) * _minmax(smooth)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-300)
    return float((actual.double() - expected.double()).abs().max() / scale)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per row of ``(B, ...)`` tensors, in float64."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
