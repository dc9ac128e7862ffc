"""CP-LRP (AttnLRP's recipe for ViTs) by hooks: equal to lxt's own patches on torchvision's ViT
(lxt 2.1 as a test-only oracle), and to an explicit float64 restatement on a timm ViT; DAAM with
CP-LRP coefficients (``daam_lrp``) equal to the float64 DAAM reference with the same backward."""

from __future__ import annotations

import importlib
import sys
import types
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import torch
from models import make_timm
from reference import agreed_with_rollout, guided_reference, reference_daam, relative_error

from vitflow import DAAM
from vitflow.adapters import resolve_adapter
from vitflow.methods.lrp import GUIDED_SIGMA, attnlrp, attnlrp_relevance, cp_lrp
from vitflow.methods.run import applicable_methods, explain_all


def _lxt_patches():
    """lxt's CP-LRP patch functions. lxt 2.1's package ``__init__`` imports its LLM patches, which
    need transformers 4; its ``efficient.patches`` and ``rules`` modules do not, so they are loaded
    without it."""
    lxt = pytest.importorskip("lxt", reason="lxt is the oracle: pip install --no-deps lxt==2.1")
    if "lxt.efficient" not in sys.modules:
        package = types.ModuleType("lxt.efficient")
        package.__path__ = [str(Path(lxt.__file__).parent / "efficient")]
        sys.modules["lxt.efficient"] = package
    return importlib.import_module("lxt.efficient.patches")


def _spread(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p += 0.1 * torch.randn_like(p)
    return model


def _torchvision_vit():
    """A small torchvision ViT in float64, spread weights, two images and their classes."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4
    )
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    return _spread(model).double().eval(), x, torch.tensor([1, 3])


def test_attnlrp_equals_lxt_on_torchvision_vit():
    model, x, target = _torchvision_vit()
    tokens, ours = attnlrp_relevance(model, x, target)
    logits = model(x).detach()
    # lxt patches the classes themselves (its way): patched for this pass only, then restored
    theirs = _lxt_relevance(model, x, target)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-15)
    assert theirs.abs().amax() > 1e-3  # not a vacuous match
    torch.testing.assert_close(model(x), logits)  # hooks and patches gone: the model as it was
    # the tokens entering the first block carry the class logit (conservation, no biases lost)
    assert tokens.shape == (2, 17)


@contextmanager
def _zennit_gamma(model, gamma: float):
    """zennit's gamma rule on every linear layer of ``model``, through lxt's zennit patch (lxt's ViT
    recipe); zennit's hooks and its patched ``BasicHook`` restored on exit."""
    pytest.importorskip("zennit", reason="lxt's gamma rule: pip install --no-deps zennit==0.5.1")
    _lxt_patches()
    from zennit.composites import LayerMapComposite
    from zennit.core import BasicHook
    from zennit.rules import Gamma

    hooks = {name: vars(BasicHook)[name] for name in ("forward", "backward")}
    composite = LayerMapComposite([(torch.nn.Linear, Gamma(gamma))])
    try:
        importlib.import_module("lxt.efficient.zennit_patches").monkey_patch_zennit()
        composite.register(model)
        yield
    finally:
        composite.remove()
        for name, method in hooks.items():
            setattr(BasicHook, name, method)


def _lxt_relevance(model, x, target, gamma: float | None = None):
    """lxt's CP-LRP input x gradient at the pixels: its patches on the classes, and with ``gamma``
    zennit's gamma rule on every linear layer through lxt's zennit patch (lxt's ViT recipe)."""
    patches = _lxt_patches()
    classes = (torch.nn.GELU, torch.nn.LayerNorm, torch.nn.MultiheadAttention)
    saved = {cls: cls.forward for cls in classes}
    try:
        patches.patch_method(patches.non_linear_forward, torch.nn.GELU, keep_original=True)
        patches.patch_method(patches.layer_norm_forward, torch.nn.LayerNorm)
        patches.patch_method(patches.cp_multi_head_attention_forward, torch.nn.MultiheadAttention,
                             keep_original=True)  # fmt: skip
        with _zennit_gamma(model, gamma) if gamma is not None else nullcontext():
            inputs = x.clone().requires_grad_(True)
            output = model(inputs)
            output[torch.arange(len(x)), target].sum().backward()
        return (inputs * inputs.grad).sum(1).detach()
    finally:
        for cls, forward in saved.items():
            cls.forward = forward
            if "original_forward" in vars(cls):
                delattr(cls, "original_forward")


@pytest.mark.parametrize("gamma", [0.05, 0.25])
def test_attnlrp_with_the_gamma_rule_equals_lxt_with_zennits_gamma(gamma):
    model, x, target = _torchvision_vit()
    logits = model(x).detach()
    _, ours = attnlrp_relevance(model, x, target, gamma=gamma)
    theirs = _lxt_relevance(model, x, target, gamma)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-15)
    _, plain = attnlrp_relevance(model, x, target)
    assert (ours - plain).abs().amax() > 1e-3 * plain.abs().amax()  # the rule changes the relevance
    torch.testing.assert_close(model(x), logits)  # every hook gone
    adapter = resolve_adapter(model)
    maps = explain_all(adapter, x, target, [f"attnlrp_gamma_{gamma}", "attnlrp"])
    expected = attnlrp(model, x, target, gamma=gamma).clamp_min(0).float()
    torch.testing.assert_close(maps[f"attnlrp_gamma_{gamma}"], expected)
    with pytest.raises(ValueError, match="gamma must be"):
        attnlrp(model, x, target, gamma=-0.1)


def test_the_gamma_rule_on_a_timm_vit_equals_zennits_on_every_linear_layer():
    """timm calls qkv, the output projection, the MLP and the head as modules: each gets the rule."""
    model = make_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([0, 4])
    tokens, _ = attnlrp_relevance(model, x, target, gamma=0.1)
    entering: list[torch.Tensor] = []
    handle = model.blocks[0].register_forward_pre_hook(lambda _m, args: entering.append(args[0]))
    try:
        # CP-LRP's other rules, ours; the gamma rule, zennit's
        with _zennit_gamma(model, 0.1), cp_lrp(resolve_adapter(model)):
            inputs = x.clone().requires_grad_(True)
            score = model(inputs)[torch.arange(2), target].sum()
            (grad,) = torch.autograd.grad(score, [entering[0]])
    finally:
        handle.remove()
    torch.testing.assert_close(tokens, (entering[0].detach() * grad).sum(-1), rtol=1e-9, atol=1e-14)
    plain, _ = attnlrp_relevance(model, x, target)
    assert (tokens - plain).abs().amax() > 1e-3 * plain.abs().amax()


def test_daam_lrp_with_the_gamma_rule_equals_daam_under_zennits_gamma_and_its_rollout_agreement():
    torch.manual_seed(4)
    model = make_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([1, 2])
    adapter = resolve_adapter(model)
    with cp_lrp(adapter, 0.25), DAAM(model) as daam:
        ours = daam(x, target=target)
    # the other CP-LRP rules ours, the gamma rule zennit's
    with _zennit_gamma(model, 0.25), cp_lrp(adapter), DAAM(model) as daam:
        theirs = daam(x, target=target)
    torch.testing.assert_close(ours.relevance, theirs.relevance, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(ours.block_maps, theirs.block_maps, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(ours.logits, theirs.logits)
    plain = reference_daam(model, x, target, cp_lrp=True)  # gamma 0: the float64 restatement
    assert (ours.block_maps - plain.block_maps).abs().amax() > 1e-3 * plain.block_maps.abs().amax()
    methods = ["daam_lrp_gamma_0.25", "daam_lrp_gamma_0.25_x_rollout", "daam_lrp_gamma_0_x_rollout",
               "daam_lrp_x_rollout"]  # fmt: skip
    maps = explain_all(adapter, x, target, methods)
    torch.testing.assert_close(maps["daam_lrp_gamma_0.25"], ours.maps[:, -1].float())
    expected = agreed_with_rollout(ours.relevance, reference_daam(model, x, target).attention, 1, (4, 4))
    assert relative_error(maps["daam_lrp_gamma_0.25_x_rollout/flow"], expected) <= 1e-6
    assert torch.equal(maps["daam_lrp_gamma_0_x_rollout"], maps["daam_lrp_x_rollout"])  # gamma 0 is daam_lrp


def _tiny_cp_lrp_case(target: list[int]):
    """A float64 timm ViT on 32 px inputs (a 4 x 4 grid), a batch of three, and the float64
    reference run with CP-LRP's backward."""
    model = make_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5).double().eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    target_tensor = torch.tensor(target)
    return model, x, target_tensor, reference_daam(model, x, target_tensor, cp_lrp=True)


def test_attnlrp_and_daam_lrp_equal_the_float64_restatement_on_a_timm_vit():
    model, x, target, expected = _tiny_cp_lrp_case([0, 2, 4])
    tokens, _ = attnlrp_relevance(model, x, target)
    torch.testing.assert_close(tokens, expected.token_relevance, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(attnlrp(model, x, target), expected.token_relevance[:, 1:].reshape(3, 4, 4))
    adapter = resolve_adapter(model)
    with cp_lrp(adapter), DAAM(model) as daam:
        result = daam(x, target=target)
    torch.testing.assert_close(result.block_maps, expected.block_maps, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(result.logits, expected.logits)  # the forward pass is the model's
    plain = reference_daam(model, x, target)
    assert (plain.block_maps - expected.block_maps).abs().amax() > 1e-6  # CP-LRP changes coefficients
    # registered, as a method and as an attention flow
    maps = explain_all(adapter, x, target, ["attnlrp", "daam_lrp"])
    torch.testing.assert_close(maps["daam_lrp"], result.maps[:, -1].float())
    assert maps["daam_lrp/flow"].shape == (3, len(model.blocks), 4, 4)
    assert (maps["attnlrp"] >= 0).all()


def test_daam_lrp_guided_equals_the_explicit_float64_product_of_patch_and_pixel_relevance():
    model, x, target, expected = _tiny_cp_lrp_case([1, 3, 0])
    _, pixels = attnlrp_relevance(model, x, target)
    torch.testing.assert_close(pixels, expected.pixel_relevance, rtol=1e-9, atol=1e-14)
    maps = explain_all(resolve_adapter(model), x, target, ["daam_lrp_guided"])["daam_lrp_guided"]
    assert maps.shape == (3, 32, 32)  # at the pixels, not the 4 x 4 grid
    for i in range(3):
        final = expected.block_maps[i].sum(0)  # daam_lrp's accumulated map after the last block
        reference = guided_reference(final, expected.pixel_relevance[i], GUIDED_SIGMA)
        assert relative_error(maps[i], reference) < 1e-6  # the method's maps are float32
        assert reference.amax() > 0.1 and (reference > 0).float().mean() > 0.5  # not degenerate
    # the pixel part matters: the product is not the upsampled patch map
    plain = explain_all(resolve_adapter(model), x, target, ["daam_lrp"])["daam_lrp"]
    upsampled = torch.nn.functional.interpolate(plain[:, None], size=(32, 32), mode="bilinear")[:, 0]
    assert (maps - upsampled / upsampled.flatten(1).amax(1)[:, None, None]).abs().amax() > 0.1


def test_cp_lrp_refuses_attention_it_cannot_reach():
    model = make_timm("beit_base_patch16_224", img_size=32, patch_size=8, depth=2, global_pool="token").eval()
    adapter = resolve_adapter(model)
    kept, notes = applicable_methods(adapter, ["daam", "attnlrp", "daam_lrp"])
    assert kept == ["daam"] and "CP-LRP's hooks do not reach Beit's attention" in notes[0]
    with pytest.raises(NotImplementedError, match="CP-LRP's hooks reach timm's Attention"):
        attnlrp(model, torch.randn(1, 3, 32, 32))
