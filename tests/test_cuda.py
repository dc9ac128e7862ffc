"""The engine, the families and the baselines on a CUDA GPU, where attention runs in fused kernels
(flash / memory-efficient SDPA) that the CPU tests never reach. Every check compares with a float64
run on the CPU: the explicit reference for timm, the CPU engine (itself checked against explicit
references in test_engine_exact / test_families) for the other families."""

import contextlib
import copy
import json

import pytest
import torch
import transformers
from models import make_timm
from reference import correlation, reference_daam, relative_error
from reference_families import perturb

from vitflow import DAAM
from vitflow.cli import main
from vitflow.methods import attention_rollout, generic_attention, trace_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@contextlib.contextmanager
def exact_float32():
    """TF32 off (cuDNN convolutions use it by default): float32 on the GPU should then agree with
    float64 to float32 rounding, the tolerance the CPU tests use."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.fixture(scope="module")
def deit():
    torch.manual_seed(0)
    model = make_timm("deit_small_patch16_224", img_size=224)
    x = torch.randn(4, 3, 224, 224)
    return model, x, reference_daam(model, x)


def test_float32_fused_kernels_on_cuda_match_float64_reference(deit):
    model, x, ref = deit
    gpu = copy.deepcopy(model).cuda()
    assert all(block.attn.fused_attn for block in gpu.blocks)
    with exact_float32(), DAAM(gpu) as daam:
        result = daam(x.cuda())
    assert result.block_maps.is_cuda and result.block_maps.dtype == torch.float32
    assert torch.equal(result.target.cpu(), ref.target)
    error = relative_error(result.block_maps.double().cpu(), ref.block_maps)
    print(f"float32 CUDA vs float64 reference: {error:.2e}")
    assert error <= 1e-4


@pytest.mark.parametrize("precision", ["autocast_bf16", "autocast_fp16", "half_model"])
def test_half_precision_on_cuda_gives_float32_maps_close_to_reference(deit, precision):
    model, x, ref = deit
    gpu = copy.deepcopy(model).cuda()
    x = x.cuda()
    if precision == "half_model":
        gpu, x, context = gpu.half(), x.half(), contextlib.nullcontext()
    else:
        dtype = torch.bfloat16 if precision == "autocast_bf16" else torch.float16
        context = torch.autocast("cuda", dtype=dtype)
    with context, DAAM(gpu) as daam:
        result = daam(x, ref.target.cuda())  # the reference's classes: half logits may rank others first
    assert result.block_maps.dtype == torch.float32
    error = relative_error(result.block_maps.double().cpu(), ref.block_maps)
    worst = float(correlation(result.maps[:, -1].cpu(), ref.block_maps.sum(1)).min())
    print(f"{precision}: relative error {error:.2e}, worst final-map correlation {worst:.5f}")
    assert error <= 5e-2 and worst >= 0.99


def test_cuda_call_restores_the_model_and_holds_no_memory(deit):
    model, x, _ = deit
    gpu = copy.deepcopy(model).cuda()
    x = x.cuda()
    gpu.blocks[0].attn.qkv.weight.requires_grad_(False)  # mixed flags come back as they were
    flags = [p.requires_grad for p in gpu.parameters()]
    with torch.no_grad():
        before = gpu(x)
    with DAAM(gpu) as daam:
        daam(x)
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        daam(x)
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= held  # records are cleared after each call
    with torch.no_grad():
        assert torch.equal(gpu(x), before)
    assert [p.requires_grad for p in gpu.parameters()] == flags
    assert all(p.grad is None for p in gpu.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in gpu.modules())


def _hf_vit():
    config = transformers.ViTConfig(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96, image_size=32,
        patch_size=8, num_labels=6,
    )  # fmt: skip
    torch.manual_seed(0)
    model = perturb(transformers.ViTForImageClassification(config)).eval()
    assert model.config._attn_implementation == "sdpa"
    return model


def _torchvision_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(2)
    return perturb(VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=48,
                                     mlp_dim=96, num_classes=6)).eval()  # fmt: skip


@pytest.mark.parametrize("family", ["hf", "torchvision"])
def test_other_families_on_cuda_match_the_float64_cpu_engine(family):
    model = _hf_vit() if family == "hf" else _torchvision_vit()
    x = torch.randn(3, 3, 32, 32)
    target = [0, 3, 5]
    with DAAM(copy.deepcopy(model).double()) as daam:
        cpu = daam(x.double(), target)
    with exact_float32(), DAAM(model.cuda()) as daam:
        gpu = daam(x.cuda(), target)
    error = relative_error(gpu.block_maps.double().cpu(), cpu.block_maps)
    print(f"{family} float32 CUDA vs float64 CPU: {error:.2e}")
    assert error <= 1e-4


def test_baselines_on_cuda_match_float64_cpu():
    model = make_timm("deit_tiny_patch16_224")
    x = torch.randn(2, 3, 64, 64)
    cpu = trace_attention(copy.deepcopy(model).double(), x.double())
    with exact_float32():
        gpu = trace_attention(model.cuda(), x.cuda(), cpu.target.cuda())
    for method in (generic_attention, attention_rollout):
        error = relative_error(method(gpu).double().cpu(), method(cpu))
        print(f"{method.__name__} float32 CUDA vs float64 CPU: {error:.2e}")
        assert error <= 1e-4


def test_evaluate_on_cuda_agrees_with_cpu(tmp_path):
    """Every method and metric of `vitflow evaluate` with the bundled demo ViT on the GPU: the same
    per-image scores as on the CPU (rank-based metrics can flip on near-ties, so a loose bound)."""
    scenes = str(tmp_path / "scenes")
    assert main(["scenes", "--out", scenes, "--n", "3", "--seed", "1", "--objects", "2"]) == 0
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(["evaluate", "--data", scenes, "--out", str(out), "--device", device,
                     "--quiet"]) == 0  # fmt: skip
        runs[device] = json.loads((out / "results.json").read_text())
    cpu, gpu = runs["cpu"]["methods"], runs["cuda"]["methods"]
    assert set(cpu) == set(gpu) and len(cpu) >= 8
    for method, scores in cpu.items():
        for metric, value in scores.items():
            print(f"{method} {metric}: cpu {value:.4f} cuda {gpu[method][metric]:.4f}")
            assert abs(gpu[method][metric] - value) <= 0.05 * max(1.0, abs(value)), (method, metric)
