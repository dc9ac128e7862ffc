"""The bundled demo ViT: a timm ``VisionTransformer`` trained from scratch on
``vitflow.data.scenes``, so that vitflow runs offline with a model whose decisions are real.

Trained by ``scripts/train_demo_model.py``; the weights and the model card ship in
``vitflow/assets``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from timm.layers import PatchEmbed
from torch import nn

from vitflow.data.preprocess import Preprocessing
from vitflow.data.scenes import CLASS_NAMES

WEIGHTS = "demo_vit.safetensors"
MODEL_CARD = "demo_vit.md"
BANK = "demo_bank.bank"

# timm VisionTransformer arguments of the demo architecture: 96 px input, 8 px patches (12x12 grid)
ARCHITECTURE: dict[str, Any] = dict(
    img_size=96,
    patch_size=8,
    embed_dim=192,
    depth=6,
    num_heads=3,
    mlp_ratio=3.0,
    num_classes=len(CLASS_NAMES),
    global_pool="token",
)
# what the model saw in training: the whole scene resized (no crop), bilinear, mean/std 0.5
DATA_CONFIG = dict(
    input_size=(3, 96, 96),
    interpolation="bilinear",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    crop_pct=1.0,
    crop_mode="center",
)
NAME = "vitflow-demo-vit"


class ConvStemPatchEmbed(PatchEmbed):
    """timm's ``PatchEmbed`` with a small convolutional stem (three stride-2 3x3 convolutions, then a
    1x1 projection) in place of the single 8x8 patchify convolution: the same 12x12 grid of patch
    tokens, but a ViT trained from scratch on little data converges far faster (Xiao et al.,
    "Early Convolutions Help Transformers See Better", NeurIPS 2021)."""

    def __init__(self, *args, embed_dim: int = 768, in_chans: int = 3, bias: bool = True, **kwargs) -> None:
        super().__init__(*args, embed_dim=embed_dim, in_chans=in_chans, bias=bias, **kwargs)  # type: ignore[misc]
        if self.patch_size != (8, 8):
            raise ValueError(f"the demo stem downsamples by 8, got patch size {self.patch_size}")
        widths = (in_chans, 32, 64, 128)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
        layers.append(nn.Conv2d(widths[-1], embed_dim, 1, bias=bias))
        self.proj = nn.Sequential(*layers)  # type: ignore[assignment]  # the stem replaces the patchify conv


def build_demo_model() -> nn.Module:
    """The demo architecture with random weights (timm's ``VisionTransformer``)."""
    from timm.models.vision_transformer import VisionTransformer

    model: Any = VisionTransformer(**ARCHITECTURE, embed_layer=ConvStemPatchEmbed)
    model.pretrained_cfg = {**DATA_CONFIG, "num_classes": len(CLASS_NAMES), "architecture": NAME}
    return model


def weights_path():
    """Path of the shipped weights (a ``Traversable`` inside the installed package)."""
    return resources.files("vitflow") / "assets" / WEIGHTS


def bank_path():
    """Path of the shipped memory bank: the demo backbone's features of labelled scenes."""
    return resources.files("vitflow") / "assets" / BANK


def load_demo_model() -> tuple[nn.Module, Preprocessing]:
    """The trained demo model in eval mode, and its preprocessing (PIL image -> tensor)."""
    from vitflow.models.checkpoints import ModelLoadError, load_state_dict_strict, read_state_dict

    path = weights_path()
    if not path.is_file():
        raise ModelLoadError(
            f"the demo weights are missing from this install ({path}); reinstall vitflow, or train them "
            "with scripts/train_demo_model.py"
        )
    model = build_demo_model()
    with resources.as_file(path) as file:
        load_state_dict_strict(model, read_state_dict(file), f"demo weights {path}")
    return model.eval(), Preprocessing.for_timm(model)


def load_demo_backbone() -> tuple[nn.Module, Preprocessing]:
    """The demo model without its classifier (``num_classes=0``): its output is the [class] token
    after the final norm, the feature the shipped memory bank holds."""
    model, preprocessing = load_demo_model()
    model.reset_classifier(0)  # type: ignore[operator]  # timm's VisionTransformer method
    return model, preprocessing


def load_demo_bank():
    """The shipped ``MemoryBank`` for ``load_demo_backbone``, so the
    self-supervised (k-NN) mode runs offline too."""
    from vitflow.targets import MemoryBank

    with resources.as_file(bank_path()) as file:
        return MemoryBank.load(file)
