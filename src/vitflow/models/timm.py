"""The timm family: ``--model NAME`` or ``timm:NAME``, pretrained weights or a checkpoint, the
model's own data configuration and ImageNet class names; its catalogue rows; meta-device builds
for ``vitflow models``."""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from vitflow.data.preprocess import Preprocessing
from vitflow.models.catalogue import verdict
from vitflow.models.checkpoints import (
    ModelLoadError,
    check_hub,
    load_state_dict_strict,
    quiet_hub,
    read_state_dict,
)
from vitflow.models.family import Architecture, Family, LoadedModel, register_family


def load(name, checkpoint, headless, texts, img_size=None) -> LoadedModel:
    kwargs = {"num_classes": 0} if headless else {}
    if headless:
        # a backbone's feature is its [class] token after the final norm (method.md section 5);
        # BEiT, EVA and others average the patches by default
        kwargs.update(class_token_backbone_kwargs(name))
    if img_size is not None:
        kwargs["img_size"] = img_size
    model = load_timm_model(name, checkpoint, **kwargs)
    return LoadedModel(model, Preprocessing.for_timm(model), None if headless else class_names(model), name)


def class_token_backbone_kwargs(name: str) -> dict:
    """timm keyword arguments that make ``name`` a [class]-token backbone with the same weights:
    ``{}`` for [class]-token models; for models with a [class] token whose default head averages
    the patch tokens (BEiT, EVA, ...), ``global_pool='token'`` with the final norm kept where the
    weights put it (after pooling, ``fc_norm``), so pretrained weights load key for key. Built on
    the meta device (no weights)."""
    try:
        model = meta_timm(name.split(".")[0])
    except Exception:  # noqa: BLE001 - the real build reports the problem
        return {}
    if getattr(model, "cls_token", None) is None or getattr(model, "global_pool", "token") != "avg":
        return {}
    kwargs: dict[str, object] = {"global_pool": "token"}
    if isinstance(getattr(model, "fc_norm", None), nn.Module) and not isinstance(model.fc_norm, nn.Identity):
        params = inspect.signature(type(model).__init__).parameters
        flag = next((p for p in ("use_fc_norm", "fc_norm") if p in params), None)
        if flag is not None:
            kwargs[flag] = True
    return kwargs


def load_timm_model(name: str, checkpoint: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """A timm model in eval mode: weights from ``checkpoint`` when given, else pretrained.

    With a checkpoint the number of classes is read from its ``head.weight`` unless given;
    ``num_classes=0`` makes a backbone and ignores the checkpoint's classifier.
    """
    try:
        import timm
    except ImportError:
        raise ModelLoadError("timm models need timm: pip install 'vitflow[timm]'") from None
    if not timm.is_model(name.split(".")[0]) and not timm.is_model(name):
        raise ModelLoadError(f"timm has no model named {name!r}; list them with timm.list_models('*vit*')")
    _check_architecture(name, kwargs)  # before any download or checkpoint read
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        head = state.get("head.weight")
        if kwargs.get("num_classes") == 0:  # a backbone from a classifier's checkpoint
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        elif head is not None and head.ndim == 2:
            kwargs.setdefault("num_classes", head.shape[0])
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
            size = None if "img_size" in kwargs else _timm_image_size(model, state)
            if size is not None:  # fine-tuned at another resolution: build the model for it
                model = timm.create_model(name, pretrained=False, img_size=size, **kwargs)
        except Exception as error:
            raise ModelLoadError(f"cannot build timm model {name!r}: {error}") from None
        load_state_dict_strict(model, state, f"checkpoint {checkpoint}")
        return model.eval()
    hint = "pass --checkpoint FILE (.safetensors or .pth)"
    check_hub(name, _hub_id(name), ("model.safetensors", "pytorch_model.bin"), hint)
    try:
        with quiet_hub():
            model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(
            f"could not get pretrained weights for {name!r} ({type(error).__name__}: {reason}); "
            f"offline? download them elsewhere and {hint}"
        ) from None
    return model.eval()


def _check_architecture(name: str, kwargs: dict) -> None:
    """Refuse, before any download, a model DAAM cannot explain: built on the meta device (no
    weights, no memory), the same verdict as ``vitflow models``."""
    try:
        model = meta_timm(name.split(".")[0], **{k: v for k, v in kwargs.items() if k != "pretrained"})
    except Exception:  # noqa: BLE001 - the real build reports the problem
        return
    reason = verdict(model)
    if reason is not None:
        raise ModelLoadError(f"{name}: DAAM cannot explain it: {reason}")


def _hub_id(name: str) -> str | None:
    """The Hugging Face repository timm downloads ``name``'s weights from, if any."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        return None if cfg is None else cfg.hf_hub_id
    except Exception:  # noqa: BLE001 - no hub id: timm reports its own failure
        return None


def _timm_image_size(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The input size a checkpoint's position embedding ``(1, prefix + n, C)`` was trained at
    (``n`` patches on a square grid), when it differs from ``model``'s; else ``None``."""
    pos, own = state.get("pos_embed"), getattr(model, "pos_embed", None)
    patch_embed = getattr(model, "patch_embed", None)
    if pos is None or own is None or patch_embed is None or pos.ndim != 3 or pos.shape == own.shape:
        return None
    own_patches = getattr(patch_embed, "num_patches", None)
    if own_patches is None:
        return None
    prefix = own.shape[1] - own_patches  # position rows of prefix tokens (0 for CaiT, no_embed_class)
    patches = pos.shape[1] - prefix
    side = math.isqrt(max(patches, 0))
    patch = patch_embed.patch_size
    patch = patch[0] if isinstance(patch, tuple) else patch
    return side * patch if side > 0 and side * side == patches else None


def class_names(model: nn.Module) -> list[str] | None:
    """Human-readable class names for timm models trained on an ImageNet subset, else ``None``."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        info = ImageNetInfo(subset)
        names = [info.index_to_description(i) for i in range(info.num_classes())]
    except Exception:  # metadata is a nicety: any failure means "no names"
        return None
    return names if len(names) == getattr(model, "num_classes", None) else None


def timm_names(pattern: str = "*") -> list[str]:
    import timm

    return timm.list_models(pattern)


def meta_timm(name: str, **kwargs) -> nn.Module:
    """timm's ``name`` built on the meta device: the architecture without weights or memory."""
    import timm

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False, **kwargs)


def timm_verdicts(names: list[str]) -> Iterator[tuple[str, str, str]]:
    """``(name, class name, status)`` for each timm name, built on the meta device. ``status`` is
    ``"yes"``, ``"yes, with global_pool='token'"`` (a [class]-token model whose default head
    averages patch tokens) or ``"no: <reason>"``."""
    for name in names:
        try:
            model = meta_timm(name)
        except Exception as error:  # noqa: BLE001 - a zoo entry that does not build is reported
            yield name, "?", f"no: timm cannot build it offline ({type(error).__name__}: {error})"
            continue
        reason = verdict(model)
        if reason is None:
            yield name, type(model).__name__, "yes"
            continue
        if (
            getattr(model, "cls_token", None) is not None
            and getattr(model, "global_pool", "token") != "token"
        ):
            try:
                if verdict(meta_timm(name, global_pool="token")) is None:
                    yield (
                        name,
                        type(model).__name__,
                        f"yes, with global_pool='token' (as a backbone or with a head "
                        f"trained on the [class] token; its default {model.global_pool!r} head is refused)",
                    )
                    continue
            except Exception:  # noqa: BLE001, S112 - the plain verdict below stands
                pass
        yield name, type(model).__name__, f"no: {reason}"


_TINY = dict(pretrained=False, depth=2, embed_dim=48, num_heads=4, num_classes=5)

ARCHITECTURES = (
    Architecture(
        "timm",
        "VisionTransformer",
        "ViT, DeiT, DINO, DINOv2, CLIP and OpenCLIP towers in timm",
        "vit_base_patch16_224",
        True,
        "",
        dict(name="vit_base_patch16_224", img_size=32, **_TINY),
    ),
    Architecture(
        "timm",
        "VisionTransformer",
        "DINOv2 with registers (prefix tokens dropped)",
        "vit_small_patch14_reg4_dinov2",
        True,
        "",
        dict(name="vit_small_patch14_reg4_dinov2", img_size=28, **_TINY),
    ),
    Architecture(
        "timm",
        "VisionTransformer",
        "DeiT III (layer scale)",
        "deit3_small_patch16_224",
        True,
        "",
        dict(name="deit3_small_patch16_224", img_size=32, **_TINY),
    ),
    Architecture(
        "timm",
        "VisionTransformer",
        "FlexiViT",
        "flexivit_small",
        True,
        "",
        dict(name="flexivit_small", img_size=32, patch_size=8, **_TINY),
    ),
    Architecture(
        "timm",
        "VisionTransformer",
        "hybrid ResNet-ViT (CNN stem)",
        "vit_small_r26_s32_224",
        True,
        "",
        dict(name="vit_small_r26_s32_224", img_size=64, **_TINY),
    ),
    Architecture(
        "timm",
        "VisionTransformerDistilled",
        "DeiT distilled ([class] + distillation token)",
        "deit_small_distilled_patch16_224",
        True,
        "",
        dict(name="deit_small_distilled_patch16_224", img_size=32, **_TINY),
    ),
    Architecture(
        "timm",
        "Beit",
        "BEiT, BEiT v2 (relative position bias)",
        "beitv2_base_patch16_224",
        True,
        "with global_pool='token' (timm's default 'avg' is refused)",
        dict(name="beitv2_base_patch16_224", img_size=32, global_pool="token", **_TINY),
    ),
    Architecture(
        "timm",
        "Eva",
        "EVA, EVA02, DINOv3 (rotary q/k, SwiGLU, sub-LN)",
        "eva02_small_patch14_224",
        True,
        "with global_pool='token' (timm's default 'avg' is refused)",
        dict(name="eva02_small_patch14_224", img_size=28, global_pool="token", **_TINY),
    ),
    Architecture(
        "timm",
        "VisionTransformerRelPos",
        "ViT with relative position bias, [class] variants",
        "vit_relpos_base_patch16_cls_224",
        True,
        "",
        dict(name="vit_relpos_base_patch16_cls_224", img_size=32, **_TINY),
    ),
    Architecture(
        "timm",
        "Cait",
        "CaiT (maps from its class-attention blocks)",
        "cait_xxs24_224",
        True,
        "",
        dict(name="cait_xxs24_224", img_size=32, pretrained=False, num_classes=5, depth=2),
    ),
    Architecture(
        "timm",
        "Xcit",
        "XCiT (maps from its class-attention blocks)",
        "xcit_nano_12_p16_224",
        True,
        "",
        dict(name="xcit_nano_12_p16_224", img_size=32, pretrained=False, num_classes=5, depth=2),
    ),
    Architecture(
        "timm",
        "VisionTransformer",
        "SigLIP towers, *_gap_* ViTs",
        "vit_base_patch16_siglip_224",
        False,
        "reads attention-pooled or averaged patch tokens, not the [class] token",
        dict(name="vit_base_patch16_siglip_224", img_size=32, **_TINY),
    ),
    Architecture(
        "timm",
        "SwinTransformer",
        "Swin, Swin V2",
        "swin_tiny_patch4_window7_224",
        False,
        "hierarchical, no [class] token",
        dict(
            name="swin_tiny_patch4_window7_224",
            pretrained=False,
            num_classes=5,
            embed_dim=24,
            depths=(1, 1),
            num_heads=(2, 2),
            window_size=4,
            img_size=32,
        ),
    ),
)


def build_small(spec: dict) -> nn.Module:
    import timm

    spec = dict(spec)
    return timm.create_model(spec.pop("name"), **spec)


register_family(
    Family(
        "timm",
        load,
        ARCHITECTURES,
        build_small,
        names=timm_names,
        verdicts=timm_verdicts,
        takes_img_size=True,
    )
)
