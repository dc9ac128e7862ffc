"""Baselines against independent references: timm's own unfused attention with autograd, written-
out formulas, and pytorch-grad-cam itself."""

import numpy as np
import pytest
import torch
from models import make_timm

from vitflow.methods import (
    attention_gradcam,
    attention_rollout,
    generic_attention,
    gradcam_tokens,
    input_x_gradient,
    raw_attention,
    trace_attention,
)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return make_timm("deit_tiny_distilled_patch16_224", num_classes=6).double()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def explicit_attention(model, x, target):
    """timm's own unfused attention: the softmax output (attn_drop's output) with retained grads."""
    kept, handles = [], []
    for block in model.blocks:
        block.attn.fused_attn = False

        def keep(_m, _i, out):
            out.retain_grad()
            kept.append(out)

        handles.append(block.attn.attn_drop.register_forward_hook(keep))
    try:
        inputs = x.clone().requires_grad_(True)
        logits = model(inputs)
        logits[torch.arange(len(x)), target].sum().backward()
        return [a.detach() for a in kept], [a.grad for a in kept], inputs.grad
    finally:
        for handle in handles:
            handle.remove()
        for block in model.blocks:
            block.attn.fused_attn = True
        model.zero_grad(set_to_none=True)


def test_trace_gives_the_attention_and_its_gradient_exactly(vit, x):
    target = torch.tensor([2, 5])
    trace = trace_attention(vit, x, target=target, input_grad=True)
    attention, grads, input_grad = explicit_attention(vit, x, target)
    assert trace.prefix_tokens == 2 and trace.grid == (4, 4) and len(trace.attention) == 12
    for ours, theirs in zip(trace.attention, attention, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(trace.attention_grad, grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(trace.input_grad, input_grad)
    assert all(block.attn.fused_attn for block in vit.blocks)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in vit.modules())


def test_attention_baselines_match_their_formulas_written_out(vit, x):
    target = torch.tensor([1, 3])
    trace = trace_attention(vit, x, target=target)
    attention, grads, _ = explicit_attention(vit, x, target)
    a = [t.numpy() for t in attention]
    g = [t.numpy() for t in grads]
    n = a[0].shape[-1]
    for i in range(2):
        raw = a[-1][i, :, 0, 2:].mean(0)
        np.testing.assert_allclose(raw_attention(trace)[i].flatten().numpy(), raw, rtol=1e-9)
        rollout = np.eye(n)
        for block in a:
            fused = 0.5 * block[i].mean(0) + 0.5 * np.eye(n)
            fused /= fused.sum(-1, keepdims=True)
            rollout = fused @ rollout
        np.testing.assert_allclose(attention_rollout(trace)[i].flatten().numpy(), rollout[0, 2:], rtol=1e-9)
        cam = np.maximum(g[-1][i] * a[-1][i], 0).mean(0)[0, 2:]
        np.testing.assert_allclose(attention_gradcam(trace)[i].flatten().numpy(), cam, rtol=1e-9, atol=1e-15)
        relevance = np.eye(n)
        for block, grad in zip(a, g, strict=True):
            relevance = relevance + np.maximum(grad[i] * block[i], 0).mean(0) @ relevance
        np.testing.assert_allclose(generic_attention(trace)[i].flatten().numpy(), relevance[0, 2:], rtol=1e-9)
    for fusion in ("max", "min"):
        assert attention_rollout(trace, head_fusion=fusion).shape == (2, 4, 4)
    with pytest.raises(ValueError, match="input gradient"):
        input_x_gradient(x, trace)


def test_gradcam_on_tokens_matches_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(2)
    model = make_timm("vit_tiny_patch16_224", num_classes=6)
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([0, 4])

    def reshape_transform(tensor):  # the correct transform for 1 prefix token on a 4x4 grid
        return tensor[:, 1:].reshape(tensor.shape[0], 4, 4, tensor.shape[2]).permute(0, 3, 1, 2)

    ours = gradcam_tokens(model, x, target, model.blocks[-1].norm1)
    layer = model.blocks[-1].norm1
    targets = [ClassifierOutputTarget(int(t)) for t in target]
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape_transform) as cam:
        cam(input_tensor=x, targets=targets)  # fills its activations and gradients
        acts = cam.activations_and_grads.activations[0].cpu().numpy()
        grads = cam.activations_and_grads.gradients[0].cpu().numpy()
        # pytorch-grad-cam's own per-layer computation, before it rescales to the image size
        raw = np.maximum(cam.get_cam_image(x, layer, targets, acts, grads, False), 0)
    theirs = torch.from_numpy(raw).float()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
    assert ours.abs().max() > 0
