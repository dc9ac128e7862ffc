"""DAAM's per-block maps equal an explicit float64 reference on real timm architectures."""

import pytest
import torch
from models import make_timm
from reference import correlation, reference_daam, relative_error

from vitflow import DAAM

ARCHITECTURES = {
    "vit_tiny": ("vit_tiny_patch16_224", {}, (64, 64)),
    "deit_small": ("deit_small_patch16_224", {}, (64, 64)),
    "deit_tiny_distilled": ("deit_tiny_distilled_patch16_224", {}, (64, 64)),
    "dinov2_registers": ("vit_small_patch14_reg4_dinov2", {"num_classes": 10, "img_size": 56}, (56, 56)),
    "qk_norm": ("vit_tiny_patch16_224", {"qk_norm": True}, (64, 64)),
    "non_square": ("vit_tiny_patch16_224", {"img_size": (48, 80)}, (48, 80)),
    "dynamic_size": ("vit_tiny_patch16_224", {"dynamic_img_size": True}, (80, 48)),
}


@pytest.mark.parametrize("case", list(ARCHITECTURES))
def test_block_maps_equal_explicit_float64_reference(case):
    name, kwargs, size = ARCHITECTURES[case]
    model = make_timm(name, **kwargs).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    ref = reference_daam(model, x)
    assert ref.identity_error < 1e-12
    assert ref.block_maps.abs().max() > 0 and (ref.block_maps > 0).float().mean() > 0.05

    with DAAM(model) as daam:
        result = daam(x)

    assert result.block_maps.dtype == torch.float64
    assert result.block_maps.shape == ref.block_maps.shape
    assert torch.equal(result.target, ref.target)
    assert relative_error(result.block_maps, ref.block_maps) <= 1e-5
    assert relative_error(result.relevance, ref.relevance) <= 1e-5
    assert relative_error(result.logits, ref.logits) <= 1e-12


def test_prefix_tokens_and_grid_are_resolved_per_family_member():
    cases = {
        "deit_tiny_distilled": (2, (4, 4)),
        "dinov2_registers": (5, (4, 4)),
        "non_square": (1, (3, 5)),
        "dynamic_size": (1, (5, 3)),
    }
    for case, (prefix, grid) in cases.items():
        name, kwargs, size = ARCHITECTURES[case]
        with DAAM(make_timm(name, **kwargs)) as daam:
            result = daam(torch.randn(1, 3, *size))
        assert (result.prefix_tokens, result.grid) == (prefix, grid), case
        assert result.maps.shape[-2:] == grid


def test_float32_run_with_fused_attention_matches_float64_reference():
    model = make_timm("deit_small_patch16_224")
    assert all(block.attn.fused_attn for block in model.blocks)
    x = torch.randn(3, 3, 64, 64)
    ref = reference_daam(model, x)
    with DAAM(model) as daam:
        result = daam(x)
        assert all(block.attn.fused_attn for block in model.blocks)
    assert result.block_maps.dtype == torch.float32
    assert relative_error(result.block_maps, ref.block_maps) <= 1e-4


def test_unfused_attention_gives_the_same_maps():
    model = make_timm("vit_tiny_patch16_224").double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with DAAM(model) as daam:
        fused = daam(x)
    for block in model.blocks:
        block.attn.fused_attn = False
    with DAAM(model) as daam:
        explicit = daam(x)
    assert relative_error(explicit.block_maps, fused.block_maps) <= 1e-10


def test_identity_rho_matches_reference():
    model = make_timm("vit_tiny_patch16_224").double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    ref = reference_daam(model, x, target=3, rho="identity")
    with DAAM(model, rho="identity") as daam:
        result = daam(x, target=3)
    assert relative_error(result.block_maps, ref.block_maps) <= 1e-5
    relu = reference_daam(model, x, target=3, rho="relu")
    assert relative_error(relu.block_maps, ref.block_maps) > 1e-3  # the option matters


def test_batch_equals_one_by_one():
    model = make_timm("deit_tiny_distilled_patch16_224").double()
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    targets = [1, 5, 0, 7]
    with DAAM(model) as daam:
        batch = daam(x, target=targets)
        singles = [daam(x[i : i + 1], target=targets[i]) for i in range(4)]
    for i, single in enumerate(singles):
        assert relative_error(batch.block_maps[i], single.block_maps[0]) <= 1e-10
        assert torch.equal(batch.target[i : i + 1], single.target)


def test_accumulated_maps_are_running_sums_of_block_maps():
    with DAAM(make_timm("vit_tiny_patch16_224").double()) as daam:
        result = daam(torch.randn(2, 3, 64, 64, dtype=torch.float64))
    for b in range(result.num_blocks):
        torch.testing.assert_close(result.maps[:, b], result.block_maps[:, : b + 1].sum(1))
    assert torch.equal(result.final, result.maps[:, -1])
    assert (result.maps[:, 1:] >= result.maps[:, :-1]).all()  # non-negative maps only grow


def test_normalize_blocks_min_max_normalises_each_block_before_summing():
    model = make_timm("vit_tiny_patch16_224").double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with DAAM(model, normalize_blocks=True) as daam:
        result = daam(x)
    flat = result.block_maps.flatten(-2)
    expected = (flat - flat.amin(-1, keepdim=True)) / (
        flat.amax(-1, keepdim=True) - flat.amin(-1, keepdim=True)
    )
    torch.testing.assert_close(result.maps, expected.reshape(result.maps.shape).cumsum(1))


def test_start_block_accumulates_from_the_chosen_block_on():
    model = make_timm("vit_tiny_patch16_224").double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with DAAM(model, start_block=4) as daam:
        result = daam(x)
    assert (result.maps[:, :3] == 0).all()
    for b in range(3, result.num_blocks):
        torch.testing.assert_close(result.maps[:, b], result.block_maps[:, 3 : b + 1].sum(1))
    with (
        DAAM(model, start_block=13) as daam,
        pytest.raises(ValueError, match="start_block must be between 1 and 12"),
    ):
        daam(x)


def test_bfloat16_model_and_autocast_give_float32_maps_close_to_float64_reference():
    torch.manual_seed(0)
    model = make_timm("deit_small_patch16_224")
    x = torch.randn(2, 3, 64, 64)
    ref = reference_daam(model, x)
    half = make_timm("deit_small_patch16_224")
    half.load_state_dict(model.state_dict())
    half = half.bfloat16()
    with DAAM(half) as daam:
        cast = daam(x.bfloat16(), ref.target)  # the reference's classes: bf16 logits may rank others first
    with torch.autocast("cpu", dtype=torch.bfloat16), DAAM(model) as daam:
        auto = daam(x, ref.target)
    for result in (cast, auto):
        # maps are accumulated in float32 whatever the model's precision
        assert result.block_maps.dtype == torch.float32 and result.maps.dtype == torch.float32
        # bfloat16 keeps 8 bits of mantissa: a few percent, not more (float32 gives ~1e-6)
        assert relative_error(result.block_maps.double(), ref.block_maps) <= 5e-2
        assert (correlation(result.maps[:, -1], ref.block_maps.sum(1)) >= 0.99).all()
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


def test_all_blocks_at_once_equals_block_by_block():
    """The stacked computation the engine uses when every block is alike equals the per-block
    formulas (method.md sections 1-3), in float64, for both coefficient transforms."""
    from vitflow.core.daam import (
        class_token_output,
        class_token_outputs,
        token_relevance,
        token_relevance_all_blocks,
    )

    torch.manual_seed(0)
    blocks, batch, heads, tokens, dim = 4, 3, 2, 7, 5
    rows = [torch.rand(batch, heads, tokens, dtype=torch.float64).softmax(-1) for _ in range(blocks)]
    values = [torch.randn(batch, heads, tokens, dim, dtype=torch.float64) for _ in range(blocks)]
    coefficients = [torch.randn(batch, heads * dim, dtype=torch.float64) for _ in range(blocks)]
    for rho in ("relu", "identity"):
        stacked = token_relevance_all_blocks(rows, values, coefficients, rho)
        assert stacked.shape == (batch, blocks, tokens)
        for b in range(blocks):
            expected = token_relevance(rows[b], values[b], coefficients[b], rho)
            torch.testing.assert_close(stacked[:, b], expected, rtol=1e-12, atol=1e-12)
    outputs = class_token_outputs(rows, values)
    for b in range(blocks):
        torch.testing.assert_close(outputs[b], class_token_output(rows[b], values[b]), rtol=1e-12, atol=1e-12)
