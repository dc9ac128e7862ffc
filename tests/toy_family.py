"""A model family from one file, as a plugin would add one: a toy ViT, its adapter, and its family
record (loader, catalogue row, small build, name listing). Importing this module registers it;
``tests/test_layout.py`` imports it into copies of the registries and drives it through the
command line."""

from __future__ import annotations

import fnmatch

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vitflow.adapters import Adapter, ProjectionSite, register_adapter
from vitflow.data.preprocess import Preprocessing
from vitflow.models import Architecture, Family, LoadedModel, ModelLoadError, register_family

SIZES = {"tiny": dict(width=32, depth=2, heads=4), "small": dict(width=48, depth=3, heads=4)}
PATCH, SIDE, CLASSES = 8, 32, 8  # 8 classes: as many as the scenes evaluate explains
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class ToyAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (f(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for f in (self.to_q, self.to_k, self.to_v))  # fmt: skip
        mixed = F.scaled_dot_product_attention(q, k, v)  # fused: the capture must not need the matrix
        return self.to_out(mixed.transpose(1, 2).reshape(b, n, c))


class ToyBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = ToyAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ToyViT(nn.Module):
    """[class] token, 8 px patches on a 32 px input, ``depth`` blocks, a linear head."""

    def __init__(self, width: int, depth: int, heads: int, classes: int = CLASSES) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 1 + (SIDE // PATCH) ** 2, width) * 0.5)
        self.layers = nn.ModuleList(ToyBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, n, C)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        for layer in self.layers:
            tokens = layer(tokens)
        return self.head(self.norm(tokens)[:, 0])


@register_adapter
class ToyAdapter(Adapter):
    family = "toy"
    aliases = ("toyvit",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, ToyViT)

    def sites(self):
        return [ProjectionSite(b.attn, b.attn.to_q, b.attn.to_k, b.attn.to_v, b.attn.to_out, b.attn.heads)
                for b in self.model.layers]  # fmt: skip

    def prefix_tokens(self) -> int:
        return 1

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return image_size[0] // PATCH, image_size[1] // PATCH

    def num_classes(self) -> int | None:
        return self.model.head.out_features


def build(size: str, seed: int = 0) -> ToyViT:
    """The same random weights for the same name, every time (a stand-in for a download)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return ToyViT(**SIZES[size]).eval()
    finally:
        torch.random.set_rng_state(generator_state)


def _transform(image: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image.convert("RGB").resize((SIDE, SIDE))).copy())
    x = pixels.permute(2, 0, 1).float() / 255
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def load(name, checkpoint, headless, texts, img_size=None) -> LoadedModel:
    if name not in SIZES:
        raise ModelLoadError(f"toy has no model named {name!r}; one of {', '.join(SIZES)}")
    model = build(name)
    if headless:
        model.head = nn.Identity()
    config = {"input_size": (3, SIDE, SIDE), "interpolation": "bilinear"}
    preprocessing = Preprocessing(_transform, MEAN, STD, config)
    return LoadedModel(model, preprocessing, [f"toy_class_{i}" for i in range(CLASSES)], f"toy:{name}")


def names(pattern: str) -> list[str]:
    return [name for name in SIZES if fnmatch.fnmatch(name, pattern)]


def verdicts(found: list[str]):
    for name in found:
        yield name, "ToyViT", "yes"


FAMILY = register_family(
    Family(
        "toy",
        load,
        (Architecture("toy", "ToyViT", "the tests' toy ViT (fused attention)", "toy:tiny", True, "",
                      dict(size="tiny")),),  # fmt: skip
        lambda spec: build(spec["size"]),
        names=names,
        verdicts=verdicts,
    )
)
