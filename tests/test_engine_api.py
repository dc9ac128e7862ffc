"""Target semantics, geometry checks, errors, and exact restoration of the model."""

import pytest
import torch
from models import make_timm
from timm.layers import Attention

from vitflow import DAAM, DecompositionError


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return make_timm("vit_tiny_patch16_224", num_classes=10)


@pytest.fixture
def x():
    return torch.randn(3, 3, 64, 64)


# -- targets -------------------------------------------------------------------------------------
def test_none_target_explains_each_predicted_class(vit, x):
    with DAAM(vit) as daam:
        result = daam(x)
    assert torch.equal(result.target, result.logits.argmax(1))
    torch.testing.assert_close(result.score, result.logits.gather(1, result.target[:, None])[:, 0])


def test_int_target_broadcasts_and_sequence_gives_one_per_image(vit, x):
    with DAAM(vit) as daam:
        broadcast = daam(x, target=4)
        listed = daam(x, target=[4, 4, 4])
        tensor = daam(x, target=torch.tensor([4, 4, 4]))
        mixed = daam(x, target=(1, 4, 9))
    assert broadcast.target.tolist() == [4, 4, 4]
    torch.testing.assert_close(broadcast.maps, listed.maps)
    torch.testing.assert_close(broadcast.maps, tensor.maps)
    assert mixed.target.tolist() == [1, 4, 9]
    torch.testing.assert_close(mixed.maps[1], broadcast.maps[1])
    assert not torch.allclose(mixed.maps[0], broadcast.maps[0])


@pytest.mark.parametrize(
    "target, message",
    [
        ([1], "got 1 targets for a batch of 3"),
        ([1, 2, 3, 4], "got 4 targets for a batch of 3"),
        (10, "out of range for a model with 10 classes"),
        ([0, -1, 2], "class -1 is out of range"),
        ([0.5, 1.0, 2.0], "1-D sequence of class indices"),
        ("cat", "target .cat.: this model has no class names; give the class index"),
        (["cat", 1, 2], "target .cat.: this model has no class names"),
        (b"cat", "target must be None, an int"),
        (True, "target must be None, an int"),
    ],
)
def test_bad_targets_raise_value_errors_that_say_what_to_do(vit, x, target, message):
    with DAAM(vit) as daam, pytest.raises((ValueError, TypeError), match=message):
        daam(x, target=target)


def test_headless_backbone_is_sent_to_the_self_supervised_mode(x):
    with DAAM(make_timm("vit_tiny_patch16_224", num_classes=0)) as daam:
        with pytest.raises(ValueError, match=r"no classifier head \(num_classes=0\).*self-supervised"):
            daam(x)


# -- geometry ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"global_pool": "avg", "class_token": False}, "no \\[class\\] token"),
        ({"global_pool": "avg"}, "global_pool='avg'"),
        ({"global_pool": "map"}, "attention-pooling head"),
    ],
)
def test_models_that_do_not_decide_through_the_class_token_are_rejected(kwargs, message):
    model = make_timm("vit_tiny_patch16_224", **kwargs)
    with pytest.raises(ValueError, match=message):
        DAAM(model)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_unknown_model_error_names_its_class():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="torch.nn.modules.container.Sequential is not a Vision Transformer"):
        DAAM(model)

    class Attention(torch.nn.Module):  # attention vitflow does not know: a custom adapter is the way
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(4, 12)

    with pytest.raises(TypeError, match="test_engine_api.*Mine.*Custom ViTs"):
        DAAM(_mine(Attention))


def _mine(attention):
    model = type("Mine", (torch.nn.Module,), {"__module__": __name__})()
    model.attn = attention()
    return model


def test_explicit_geometry_overrides(vit, x):
    with DAAM(vit) as daam:
        auto = daam(x)
    with DAAM(vit, prefix_tokens=1, grid=lambda size: (size[0] // 16, size[1] // 16)) as daam:
        overridden = daam(x)
    torch.testing.assert_close(auto.maps, overridden.maps)
    with DAAM(vit, grid=(2, 8)) as daam:
        assert daam(x).maps.shape[-2:] == (2, 8)
    with DAAM(vit, prefix_tokens=2) as daam, pytest.raises(ValueError, match="do not fill a 4x4 grid"):
        daam(x)


def test_bad_input_shapes_are_rejected(vit):
    with DAAM(vit) as daam:
        with pytest.raises(ValueError, match=r"\(B, C, H, W\).*x\[None\]"):
            daam(torch.randn(3, 64, 64))
        with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
            daam(torch.randn(1, 3, 64, 64))


# -- the run-time decomposition check --------------------------------------------------------------
class BiasedAttention(Attention):
    """Adds a constant to the attention output: not what the timm adapter captures."""

    def forward(self, x, attn_mask=None, is_causal=False):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v) + 0.5
        return self.proj(self.norm(out.transpose(1, 2).reshape(B, N, C)))


def test_a_capture_that_misses_part_of_the_attention_raises_naming_model_and_block(x):
    model = make_timm("vit_tiny_patch16_224", num_classes=10)
    old = model.blocks[3].attn
    new = BiasedAttention(192, num_heads=3, qkv_bias=True)
    new.load_state_dict(old.state_dict())
    model.blocks[3].attn = new
    with (
        DAAM(model) as daam,
        pytest.raises(DecompositionError, match="VisionTransformer: block 3: .*do not sum"),
    ):
        daam(x)


def test_unsupported_attention_module_is_named():
    model = make_timm("vit_tiny_patch16_224", num_classes=10)
    model.blocks[1].attn = torch.nn.Identity()
    with pytest.raises(NotImplementedError, match="block 1 uses Identity.*Custom ViTs"):
        DAAM(model)


# -- restoration -----------------------------------------------------------------------------------
def _snapshot(model, x):
    with torch.no_grad():
        out = model(x)
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        out,
        [p.requires_grad for p in model.parameters()],
    )


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _assert_restored(model, x, before, training):
    state, out, flags = before
    assert _hook_count(model) == 0
    assert model.training is training
    assert [p.requires_grad for p in model.parameters()] == flags
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(model(x), out)
    assert all(p.grad is None for p in model.parameters())


def test_model_is_bitwise_restored_after_normal_use(x):
    model = make_timm("deit_tiny_distilled_patch16_224", num_classes=10)
    model.blocks[0].requires_grad_(False)  # mixed flags must come back exactly as they were
    before = _snapshot(model, x)
    with DAAM(model) as daam:
        assert _hook_count(model) > 0
        result = daam(x)
        with torch.no_grad():  # the hooks stay inert outside a call
            assert torch.equal(model(x), before[1])
        assert [p.requires_grad for p in model.parameters()] == before[2]
    torch.testing.assert_close(result.logits, before[1])
    _assert_restored(model, x, before, training=False)


def test_exception_inside_the_with_block_propagates_and_restores(x):
    model = make_timm("vit_tiny_patch16_224", num_classes=10)
    before = _snapshot(model, x)
    with pytest.raises(KeyError, match="user error"):
        with DAAM(model) as daam:
            daam(x)
            raise KeyError("user error")
    _assert_restored(model, x, before, training=False)


def test_failed_call_restores_flags_and_close_is_idempotent(x):
    model = make_timm("vit_tiny_patch16_224", num_classes=10).train()
    before = _snapshot(model, x)
    daam = DAAM(model)
    with pytest.raises(ValueError):
        daam(x, target=99)
    assert [p.requires_grad for p in model.parameters()] == before[2]
    daam.close()
    daam.close()
    with pytest.raises(RuntimeError, match="closed"):
        daam(x)
    model.eval()
    _assert_restored(model, x, before, training=False)


def test_result_tensors_live_on_the_model_device_and_slice_by_image(vit, x):
    with DAAM(vit) as daam:
        result = daam(x, target=[0, 1, 2])
    for tensor in (result.maps, result.block_maps, result.logits, result.target, result.relevance):
        assert tensor.device == x.device
    assert result.maps.dtype == torch.float32
    one = result[1]
    assert one.maps.shape == (1, 12, 4, 4) and one.target.tolist() == [1]
    up = result.upsample((64, 64))
    assert up.shape == (3, 12, 64, 64)
    torch.testing.assert_close(up.mean(dim=(-1, -2)), result.maps.mean(dim=(-1, -2)), rtol=0.05, atol=1e-6)


def test_one_call_explain_equals_the_context_manager_and_restores(vit, x):
    from vitflow import explain

    with DAAM(vit, rho="identity") as daam:
        expected = daam(x, target=2)
    result = explain(vit, x, target=2, rho="identity")
    torch.testing.assert_close(result.maps, expected.maps)
    assert _hook_count(vit) == 0


def test_input_grad_comes_from_the_same_pass_and_changes_nothing_else(vit, x):
    target = torch.tensor([1, 4, 7])
    with DAAM(vit) as daam:
        plain = daam(x, target=target)
        kept = daam(x, target=target, input_grad=True)
    assert plain.input_grad is None
    torch.testing.assert_close(kept.maps, plain.maps, rtol=0, atol=0)
    pixels = x.clone().requires_grad_(True)
    logits = vit(pixels)
    (expected,) = torch.autograd.grad(logits[torch.arange(3), target].sum(), pixels)
    torch.testing.assert_close(kept.input_grad, expected)
    assert kept.input_grad.abs().amax() > 0
    assert kept[1].input_grad.shape == (1, 3, 64, 64) and kept.to("cpu").input_grad is not None
    assert not any(p.grad is not None for p in vit.parameters())  # the model is left as it was
