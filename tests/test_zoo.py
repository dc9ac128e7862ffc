"""The timm zoo beyond plain ViTs (BEiT's relative position bias, EVA's rotary q/k, relative-position
ViTs, DINOv3's registers with rotary embeddings) against a float64 reference, and the
supported-model table: every row built small and explained, or refused with its reason."""

import copy
import re
from pathlib import Path

import pytest
import timm
import torch
from reference import relative_error
from reference_families import perturb

from vitflow import DAAM
from vitflow.cli import main
from vitflow.models import catalogue

MODELS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "snippets" / "models_table.md"


def reference_maps(model, x, target, prefix, grid):
    """Float64 DAAM from the model's own non-fused attention: timm's code forms the full N x N
    probabilities (read where they enter ``attn_drop``), the values are recomputed from the
    projection weights, a zero leaf on the attention output gives the coefficients."""
    model = copy.deepcopy(model).double().eval()
    rows, leaves, inputs = [], [], []
    for blk in model.blocks:
        a = blk.attn
        a.fused_attn = False
        a.register_forward_pre_hook(lambda m, args, kwargs: inputs.append(args[0]), with_kwargs=True)
        a.attn_drop.register_forward_hook(lambda m, i, out: rows.append(out[:, :, 0].detach()))

        def add_leaf(m, args):
            leaf = torch.zeros_like(args[0], requires_grad=True)
            leaves.append(leaf)
            return (args[0] + leaf,)

        point = a.norm if isinstance(getattr(a, "norm", None), torch.nn.Module) else a.proj
        point.register_forward_pre_hook(add_leaf)
    logits = model(x.double())
    grads = torch.autograd.grad(logits[torch.arange(len(x)), target].sum(), leaves)
    maps = []
    for blk, h, row, grad in zip(model.blocks, inputs, rows, grads, strict=True):
        a = blk.attn
        width = a.qkv.weight.shape[0] // 3
        bias = (
            torch.cat((a.q_bias, a.k_bias, a.v_bias))
            if getattr(a, "q_bias", None) is not None
            else a.qkv.bias
        )
        v = h @ a.qkv.weight[2 * width :].T + (0 if bias is None else bias[2 * width :])
        heads = row.shape[1]
        head_dim = width // heads
        S = torch.empty(h.shape[0], h.shape[1], width, dtype=torch.float64)
        for c in range(width):
            S[:, :, c] = row[:, c // head_dim] * v[:, :, c]
        U = torch.einsum("bnc,bc->bn", S, grad[:, 0].clamp_min(0))
        maps.append(U[:, prefix:].clamp_min(0).reshape(len(x), *grid))
    return torch.stack(maps, 1)


ZOO = {
    "beit_base_patch16_224": dict(img_size=32, prefix=1),  # relative position bias per block
    "beit_base_patch16_224.shared": dict(
        img_size=32, prefix=1, use_shared_rel_pos_bias=True, use_rel_pos_bias=False
    ),
    "beitv2_base_patch16_224": dict(img_size=32, prefix=1),
    "eva02_small_patch14_224": dict(img_size=28, prefix=1),  # rotary q/k, SwiGLU, sub-LN
    "eva_giant_patch14_224": dict(img_size=28, prefix=1, mlp_ratio=2.0),
    "vit_small_patch16_dinov3": dict(img_size=32, prefix=5),  # 4 registers + rotary
    "vit_relpos_base_patch16_cls_224": dict(img_size=32, prefix=1),
}


@pytest.mark.parametrize("key", list(ZOO))
def test_zoo_matches_float64_reference_with_fused_attention_left_on(key):
    kwargs = dict(ZOO[key])
    size, prefix = kwargs.pop("img_size"), kwargs.pop("prefix")
    name = key.split(".")[0]
    torch.manual_seed(0)
    model = timm.create_model(
        name,
        pretrained=False,
        img_size=size,
        depth=3,
        embed_dim=48,
        num_heads=4,
        num_classes=6,
        global_pool="token",
        **kwargs,
    )
    model = perturb(model, 0.05).double()
    fused = [b.attn.fused_attn for b in model.blocks]
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    target = torch.tensor([0, 3, 5])
    with DAAM(model) as daam:
        result = daam(x, target=target)
    grid = (size // model.patch_embed.patch_size[0],) * 2
    ref = reference_maps(model, x, target, prefix, grid)
    assert result.prefix_tokens == prefix and result.grid == grid
    assert ref.abs().max() > 0
    assert relative_error(result.block_maps, ref) <= 1e-6
    assert [b.attn.fused_attn for b in model.blocks] == fused
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_missing_position_bias_is_caught_by_the_decomposition_check(monkeypatch):
    """The row must include the bias the model adds: without it the run-time check fails."""
    from vitflow.adapters import timm as timm_adapter
    from vitflow.explainer.capture import DecompositionError

    model = perturb(
        timm.create_model(
            "beit_base_patch16_224",
            pretrained=False,
            img_size=32,
            depth=2,
            embed_dim=48,
            num_heads=4,
            num_classes=3,
            global_pool="token",
        ),
        0.5,
    )
    monkeypatch.setattr(timm_adapter.TimmRecomputeSite, "_bias_row", lambda self, tokens: None)
    with DAAM(model) as daam, pytest.raises(DecompositionError, match="do not sum"):
        daam(torch.randn(1, 3, 32, 32))


def test_pooled_defaults_are_refused_in_one_line():
    for name in ("beit_base_patch16_224", "eva02_small_patch14_224"):
        model = timm.create_model(
            name,
            pretrained=False,
            img_size=32 if "beit" in name else 28,
            depth=1,
            embed_dim=48,
            num_heads=4,
            num_classes=3,
        )
        with pytest.raises(ValueError, match="global_pool='avg'.*global_pool='token'"):
            DAAM(model)


@pytest.mark.parametrize("arch", catalogue.architectures(), ids=lambda a: f"{a.family}-{a.cls}-{a.example}")
def test_every_row_of_the_supported_model_table(arch):
    torch.manual_seed(0)
    model = perturb(catalogue.build_small(arch), 0.05)
    reason = catalogue.verdict(model)
    if not arch.supported:
        assert reason is not None and "\n" not in reason
        words = {"hierarchical": "hierarchical", "pool": "pool|\\[class\\] token"}
        key = "hierarchical" if "hierarchical" in arch.note else "pool"
        assert re.search(words[key], reason), reason
        with pytest.raises((ValueError, TypeError)):
            DAAM(model)
        return
    assert reason is None
    size = arch.small.get("img_size", 32)
    x = torch.randn(2, 3, size, size)
    with DAAM(model) as daam:
        result = daam(x, target=_target_for(model, daam, x))
    assert result.block_maps.shape[:2] == (2, result.num_blocks) and result.num_blocks >= 2
    assert torch.isfinite(result.block_maps).all() and result.block_maps.abs().max() > 0


def _target_for(model, daam, x):
    """Class 1 for classifiers; a feature weighting for backbones and towers."""
    from vitflow import FeatureWeightTarget

    if daam.adapter.num_classes():
        return 1
    with torch.no_grad():
        dim = daam.adapter.forward(x).shape[1]
    return FeatureWeightTarget(torch.linspace(0.1, 1.0, dim))


def test_docs_table_is_the_zoo():
    assert catalogue.markdown() in MODELS_PAGE.read_text()


def test_models_command_lists_table_and_names(capsys):
    assert main(["models", "--markdown"]) == 0
    assert catalogue.markdown().strip() in capsys.readouterr().out
    assert main(["models"]) == 0  # the terminal's table: every architecture's class, in 100 columns
    out = capsys.readouterr().out
    assert {a.family for a in catalogue.architectures()} <= set(out.split())
    assert "VisionTransformer" in out and "refused" in out  # long cells wrap within their column
    assert max(len(line) for line in out.splitlines()) <= 100
    assert main(["models", "beit*_224"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["family", "name", "class", "DAAM"]
    assert max(len(line) for line in out.splitlines()) <= 100
    assert re.search(
        r"beit_base_patch16_224 +Beit +yes, with global_pool='token'.*'avg' head is refused", out, re.DOTALL
    ), out
    assert main(["models", "vit_small_patch14_dinov2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"vit_small_patch14_dinov2\s+VisionTransformer\s+yes", out), out
    assert main(["models", "swin_t*"]) == 0
    out = capsys.readouterr().out
    assert "hierarchical" in out and "swin_t" in out
    assert main(["models", "no_such_model_*"]) == 2
    assert "no architecture matches" in capsys.readouterr().err
    # a --model spelling keeps to its family: torchvision's swin_t, not timm's swin_tiny_*
    assert main(["models", "torchvision:swin_t*"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"torchvision +swin_t +SwinTransformer +no: hierarchical", out), out
    assert "timm" not in out
    assert main(["models", "hf:*"]) == 2
    assert "transformers names are not listed by pattern" in capsys.readouterr().err
    assert main(["models", "nope:*"]) == 2
    assert "unknown model family 'nope'" in capsys.readouterr().err


def test_backbones_from_the_command_line_read_the_class_token():
    """``--bank`` builds timm models headless; those that average patches by default are built
    with global_pool='token' and their final norm where the weights have it, so the same
    checkpoint loads key for key and the feature is the normalised [class] token."""
    from vitflow.models import class_token_backbone_kwargs

    for name in ("beitv2_base_patch16_224", "eva02_small_patch14_224.mim_in22k", "beit3_base_patch16_224"):
        kwargs = class_token_backbone_kwargs(name)
        assert kwargs.get("global_pool") == "token", name
        small = dict(
            img_size=32 if "patch16" in name else 28, depth=1, embed_dim=48, num_heads=4, num_classes=0
        )
        default = timm.create_model(name.split(".")[0], pretrained=False, **small)
        backbone = timm.create_model(name.split(".")[0], pretrained=False, **small, **kwargs)
        assert default.state_dict().keys() == backbone.state_dict().keys(), name
        backbone.load_state_dict(default.state_dict())
        assert catalogue.verdict(backbone) is None and catalogue.verdict(default) is not None
        x = torch.randn(1, 3, small["img_size"], small["img_size"])
        with torch.no_grad():
            tokens = backbone.forward_features(x)
            torch.testing.assert_close(backbone(x), backbone.fc_norm(tokens[:, 0]))
    assert class_token_backbone_kwargs("vit_small_patch16_224") == {}
    assert class_token_backbone_kwargs("vit_base_patch16_siglip_224") == {}  # no [class] token: refused later
