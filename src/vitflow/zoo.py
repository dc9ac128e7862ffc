"""Which architectures vitflow explains, by family and class (``vitflow models``).

:data:`ARCHITECTURES` is the one list: the README's supported-model table is
:func:`markdown` of it (a test compares them), and a test builds every row's small
configuration (``pretrained=False``) and checks that DAAM runs on a supported row and refuses a
refused one with the row's reason. :func:`verdict` answers for a model instance;
:func:`timm_verdicts` for timm names, building each on the ``meta`` device (no weights, no
memory, about 0.1 s a model).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """One architecture class of one family, as the sweep test builds it."""

    family: str  # timm, transformers, torchvision, open_clip
    cls: str  # the model class
    covers: str  # what users know it as
    example: str  # a name users pass (timm / torchvision / open_clip name, hub id)
    supported: bool
    note: str = ""  # how to use it, or why it is refused
    # the small configuration the sweep builds: a timm name and kwargs, or a builder's name
    small: dict = field(default_factory=dict)


_TINY = dict(pretrained=False, depth=2, embed_dim=48, num_heads=4, num_classes=5)

ARCHITECTURES: list[Architecture] = [
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
    Architecture(
        "transformers",
        "ViTForImageClassification",
        "ViT (also ViTModel)",
        "google/vit-base-patch16-224",
        True,
        "",
        dict(builder="hf", cls="ViTForImageClassification"),
    ),
    Architecture(
        "transformers",
        "DeiTForImageClassificationWithTeacher",
        "DeiT, distilled DeiT",
        "facebook/deit-small-distilled-patch16-224",
        True,
        "",
        dict(builder="hf", cls="DeiTForImageClassificationWithTeacher"),
    ),
    Architecture(
        "transformers",
        "Dinov2Model",
        "DINOv2 (also Dinov2ForImageClassification)",
        "facebook/dinov2-small",
        True,
        "",
        dict(builder="hf", cls="Dinov2Model"),
    ),
    Architecture(
        "transformers",
        "Dinov2WithRegistersModel",
        "DINOv2 with registers",
        "facebook/dinov2-with-registers-small",
        True,
        "",
        dict(builder="hf", cls="Dinov2WithRegistersModel"),
    ),
    Architecture(
        "transformers",
        "CLIPVisionModelWithProjection",
        "CLIP vision tower (also CLIPVisionModel)",
        "openai/clip-vit-base-patch32",
        True,
        "",
        dict(builder="hf", cls="CLIPVisionModelWithProjection"),
    ),
    Architecture(
        "transformers",
        "SwinForImageClassification",
        "Swin",
        "microsoft/swin-tiny-patch4-window7-224",
        False,
        "hierarchical, no [class] token",
        dict(builder="hf", cls="SwinForImageClassification"),
    ),
    Architecture(
        "torchvision",
        "VisionTransformer",
        "vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14",
        "vit_b_16",
        True,
        "",
        dict(builder="torchvision", cls="VisionTransformer"),
    ),
    Architecture(
        "torchvision",
        "SwinTransformer",
        "swin_t, swin_s, swin_b, swin_v2_*",
        "swin_t",
        False,
        "hierarchical, no [class] token",
        dict(builder="torchvision", cls="SwinTransformer"),
    ),
    Architecture(
        "open_clip",
        "VisionTransformer",
        "ViT-B-32, ViT-B-16, ViT-L-14, ... ([class] pooling)",
        "ViT-B-32/openai",
        True,
        "",
        dict(builder="open_clip", pool="tok"),
    ),
    Architecture(
        "open_clip",
        "VisionTransformer",
        "attention-pooled towers (CoCa)",
        "coca_ViT-B-32",
        False,
        "reads attention-pooled tokens, not the [class] token",
        dict(builder="open_clip", pool="attn"),
    ),
]

#: starts of class names (in the model libraries) of hierarchical vision transformers: tokens are
#: merged between stages and there is no [class] token, so there is nothing for DAAM to decompose
HIERARCHICAL = (
    "Swin",
    "MaxxVit",
    "Hiera",
    "Twins",
    "PyramidVisionTransformer",
    "MultiScaleVit",
    "DaVit",
    "FocalNet",
    "GlobalContextVit",
    "Nest",
    "TinyVit",
    "EfficientVit",
    "Levit",
)


def hierarchical_reason(model: nn.Module) -> str | None:
    """A one-line refusal for a hierarchical model, or ``None``."""
    name, module = type(model).__name__, type(model).__module__
    library = module.split(".")[0] in ("timm", "transformers", "torchvision", "open_clip")
    if library and any(name.lower().startswith(h.lower()) for h in HIERARCHICAL):
        return (
            f"{name} is a hierarchical vision transformer without a [class] token (tokens are merged "
            "between stages); DAAM explains [class]-token ViTs: see `vitflow models`"
        )
    return None


def verdict(model: nn.Module) -> str | None:
    """``None`` when DAAM can explain ``model``, else the one-line reason it cannot."""
    from vitflow.adapters import resolve_adapter

    try:
        adapter = resolve_adapter(model)
        adapter.validate()
        adapter.sites()
    except (TypeError, ValueError, NotImplementedError) as error:
        return str(error).splitlines()[0]
    except Exception as error:  # noqa: BLE001 - an architecture the adapters misread is a "no", not a crash
        first = str(error).splitlines()[0] if str(error) else ""
        return f"vitflow cannot read its attention ({type(error).__name__}: {first}); write a custom adapter"
    return None


def timm_names(pattern: str = "*") -> list[str]:
    import timm

    return timm.list_models(pattern)


def meta_timm(name: str, **kwargs) -> nn.Module:
    """timm's ``name`` built on the meta device: the architecture without weights or memory."""
    import timm
    import torch

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


def other_names(pattern: str) -> Iterator[tuple[str, str, str, str | None]]:
    """``(family, name, class, reason or None)`` for the matching names of the other families
    (by architecture row: their names do not need building)."""
    try:
        import torchvision

        for name in torchvision.models.list_models(module=torchvision.models):
            if fnmatch.fnmatch(name, pattern) and (name.startswith("vit_") or name.startswith("swin")):
                row = next(
                    a
                    for a in ARCHITECTURES
                    if a.family == "torchvision" and (a.cls == "VisionTransformer") == name.startswith("vit_")
                )
                yield "torchvision", name, row.cls, None if row.supported else row.note
    except ImportError:
        pass
    try:
        import open_clip

        for name in open_clip.list_models():
            if not fnmatch.fnmatch(name, pattern):
                continue
            vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
            if "timm_model_name" in vision and vision.get("timm_model_name"):
                reason = "a timm trunk inside open_clip; load the timm model by name instead"
            elif not isinstance(vision.get("layers"), int):
                reason = "a ResNet image tower, not a ViT"
            elif vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok":
                reason = "reads pooled tokens, not the [class] token"
            else:
                reason = None
            yield "open_clip", name, "VisionTransformer", reason
    except ImportError:
        pass


def markdown() -> str:
    """The README's supported-model table."""
    rows = ["| family | class | covers | e.g. | DAAM |", "|---|---|---|---|---|"]
    for a in ARCHITECTURES:
        status = ("yes" + (f", {a.note}" if a.note else "")) if a.supported else f"refused: {a.note}"
        rows.append(f"| {a.family} | `{a.cls}` | {a.covers} | `{a.example}` | {status} |")
    return "\n".join(rows) + "\n"


def build_small(arch: Architecture) -> nn.Module:
    """The row's small random configuration (what the sweep test explains)."""
    spec = dict(arch.small)
    builder: Callable[[dict], nn.Module] = _BUILDERS[spec.pop("builder", "timm")]
    return builder(spec)


def _timm_small(spec: dict) -> nn.Module:
    import timm

    return timm.create_model(spec.pop("name"), **spec)


_HF_SMALL = dict(
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    image_size=32,
    patch_size=8,
)


def _hf_small(spec: dict) -> nn.Module:
    import transformers

    cls = getattr(transformers, spec["cls"])
    if spec["cls"].startswith("Swin"):
        config = transformers.SwinConfig(
            image_size=32,
            patch_size=4,
            embed_dim=24,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=4,
            num_labels=5,
        )
    else:
        config = cls.config_class(**_HF_SMALL, num_labels=5)
    return cls(config).eval()


def _torchvision_small(spec: dict) -> nn.Module:
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


def _open_clip_small(spec: dict) -> nn.Module:
    import open_clip

    vision = dict(image_size=32, layers=2, width=48, head_width=12, patch_size=8)
    if spec["pool"] == "attn":
        vision.update(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=4)
    text = dict(context_length=8, vocab_size=50, width=32, heads=4, layers=1)
    return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).visual.eval()


_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "timm": _timm_small,
    "hf": _hf_small,
    "torchvision": _torchvision_small,
    "open_clip": _open_clip_small,
}
