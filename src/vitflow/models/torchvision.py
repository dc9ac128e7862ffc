"""The torchvision family: ``--model torchvision:NAME``, its default weights (or a checkpoint at
any resolution) and their transforms and categories; its catalogue rows and model names."""

from __future__ import annotations

import fnmatch
import math
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from vitflow.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from vitflow.models.checkpoints import (
    ModelLoadError,
    check_download,
    load_state_dict_strict,
    offline_error,
    quiet_hub,
    read_state_dict,
)
from vitflow.models.family import Architecture, Family, LoadedModel, register_family


def load(name, checkpoint, headless, texts, img_size=None) -> LoadedModel:
    import torchvision
    from torchvision import transforms

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ModelLoadError(f"torchvision has no model named {name!r}; e.g. torchvision:vit_b_16") from None
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        head = state.get("heads.head.weight")
        kwargs = {"num_classes": head.shape[0] if head is not None else 1000}
        size = img_size or _torchvision_image_size(builder, state)
        if size is not None:
            kwargs["image_size"] = size
        try:
            model = builder(weights=None, **kwargs)
        except Exception as error:
            raise ModelLoadError(f"cannot build torchvision model {name!r}: {error}") from None
        load_state_dict_strict(model, state, f"checkpoint {checkpoint}")
        weights = None
    else:
        if img_size is not None:
            raise ModelLoadError(
                "--img-size with torchvision's pretrained weights is not possible (they fix the size); "
                "give --checkpoint FILE with weights for that size"
            )
        hint = "pass --checkpoint FILE with the weights"
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except Exception as error:
            raise offline_error(f"torchvision:{name}", error, hint) from None
        file_name = Path(urllib.parse.urlsplit(weights.url).path).name
        cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name  # where torch.hub keeps it
        check_download(f"torchvision:{name}", weights.url, cached, hint)
        try:
            with quiet_hub():
                model = builder(weights=weights)
        except Exception as error:
            raise offline_error(f"torchvision:{name}", error, hint) from None
    if weights is not None:
        transform = weights.transforms()
        mean, std = tuple(transform.mean), tuple(transform.std)
        names = list(weights.meta.get("categories", [])) or None
    else:  # torchvision's ImageNet evaluation defaults
        mean, std, names = IMAGENET_MEAN, IMAGENET_STD, _imagenet_names(torchvision, name, model)
        size = model.image_size
        transform = transforms.Compose([
            transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size), transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])  # fmt: skip
    if headless:
        model.heads = nn.Identity()
    config = {"transform": repr(transform), "mean": mean, "std": std}
    return LoadedModel(
        model.eval(), Preprocessing(transform, mean, std, config), names, f"torchvision:{name}"
    )


def _torchvision_image_size(builder, state: dict[str, torch.Tensor]) -> int | None:
    """The input size a torchvision ViT checkpoint was trained at, from its position embedding
    ``(1, 1 + n, C)`` (``n`` patches on a square grid); ``None`` when it fits the default model."""
    pos = state.get("encoder.pos_embedding")
    if pos is None or pos.ndim != 3:
        return None
    side = math.isqrt(pos.shape[1] - 1)
    if side * side != pos.shape[1] - 1:
        return None
    with torch.device("meta"):  # the default architecture's geometry, without allocating weights
        default = builder(weights=None)
    if default.encoder.pos_embedding.shape[1] == pos.shape[1]:
        return None
    return side * default.patch_size


ARCHITECTURES = (
    Architecture(
        "torchvision",
        "VisionTransformer",
        "vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14",
        "vit_b_16",
        True,
        "",
        dict(cls="VisionTransformer"),
    ),
    Architecture(
        "torchvision",
        "SwinTransformer",
        "swin_t, swin_s, swin_b, swin_v2_*",
        "swin_t",
        False,
        "hierarchical, no [class] token",
        dict(cls="SwinTransformer"),
    ),
)


def build_small(spec: dict) -> nn.Module:
    from torchvision.models import swin_transformer, vision_transformer

    if spec["cls"] == "SwinTransformer":
        return swin_transformer.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=24,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=[4, 4],
            num_classes=5,
        ).eval()
    return vision_transformer.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=48, mlp_dim=96, num_classes=5
    ).eval()


def _imagenet_names(torchvision, name: str, model: nn.Module) -> list[str] | None:
    """A checkpoint's class names when its head has ImageNet-1k's 1,000 classes: the categories
    torchvision's own weights carry (no download: they are in the weights' metadata)."""
    head = getattr(getattr(model, "heads", None), "head", None)
    try:
        categories = list(torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories", []))
    except (ValueError, AttributeError):
        return None
    if isinstance(head, nn.Linear) and categories and head.out_features == len(categories):
        return categories
    return None


def names(pattern: str) -> list[str]:
    """torchvision's ViT and Swin names matching ``pattern`` (none without torchvision)."""
    try:
        import torchvision
    except ImportError:
        return []
    return [
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if fnmatch.fnmatch(name, pattern) and name.startswith(("vit_", "swin"))
    ]


def verdicts(names: list[str]) -> Iterator[tuple[str, str, str]]:
    """By catalogue row: torchvision's names need no building."""
    for name in names:
        row = next(a for a in ARCHITECTURES if (a.cls == "VisionTransformer") == name.startswith("vit_"))
        yield name, row.cls, "yes" if row.supported else f"no: {row.note}"


register_family(
    Family(
        "torchvision", load, ARCHITECTURES, build_small, names=names, verdicts=verdicts, takes_img_size=True
    )
)
