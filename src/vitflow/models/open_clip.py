"""The open_clip family: ``--model open_clip:NAME/PRETRAINED``, a zero-shot classifier over
``--text`` prompts or the image tower as a backbone for memory banks; its catalogue rows and
model names."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator

import torch
from torch import nn

from vitflow.adapters import TextClassifier
from vitflow.data.preprocess import Preprocessing
from vitflow.models.checkpoints import (
    ModelLoadError,
    check_hub,
    load_state_dict_strict,
    offline_error,
    quiet_hub,
    read_state_dict,
)
from vitflow.models.family import Architecture, Family, LoadedModel, register_family


def load(name, checkpoint, headless, texts, img_size=None) -> LoadedModel:
    try:
        import open_clip
    except ImportError:
        raise ModelLoadError("open_clip: models need open_clip: pip install open_clip_torch") from None
    architecture, _, pretrained = name.partition("/")
    if not headless and not texts:
        raise ModelLoadError(
            "open_clip models output image embeddings: give the texts to compare with "
            "(--text 'a photo of a cat' --text 'a photo of a dog') or a memory bank (--bank)"
        )
    if not pretrained and checkpoint is None:
        raise ModelLoadError(
            f"open_clip:{name} names no weights: add a pretrained tag (open_clip:{architecture}/openai, "
            "see open_clip.list_pretrained()) or give --checkpoint FILE"
        )
    hint = "pass --checkpoint FILE (.safetensors or .pth)"
    if checkpoint is None:  # offline or unreachable hub: one line in seconds, not after retries
        try:
            hub = (open_clip.get_pretrained_cfg(architecture, pretrained) or {}).get("hf_hub") or None
        except Exception:  # noqa: BLE001 - an unknown tag is open_clip's to report
            hub = None
        files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        check_hub(f"open_clip:{name}", hub.strip("/") if hub else None, files, hint)
    try:
        with quiet_hub():
            model, _, preprocess = open_clip.create_model_and_transforms(
                architecture, pretrained=None if checkpoint else (pretrained or None)
            )
    except Exception as error:
        raise offline_error(f"open_clip:{name}", error, hint) from None
    if checkpoint is not None:
        load_state_dict_strict(model, read_state_dict(checkpoint), f"checkpoint {checkpoint}")
    model.eval()
    visual = model.visual
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    preprocessing = Preprocessing(
        preprocess, mean, std, {"transform": repr(preprocess), "mean": mean, "std": std}
    )
    label = f"open_clip:{name}"
    if headless:  # a backbone for memory banks: the image embedding
        return LoadedModel(visual, preprocessing, None, label)
    tokenizer = open_clip.get_tokenizer(architecture)
    with torch.no_grad():
        embeddings = model.encode_text(tokenizer(list(texts)))
    scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0
    return LoadedModel(TextClassifier(visual, embeddings, scale).eval(), preprocessing, list(texts), label)


ARCHITECTURES = (
    Architecture(
        "open_clip",
        "VisionTransformer",
        "ViT-B-32, ViT-B-16, ViT-L-14, ... ([class] pooling)",
        "ViT-B-32/openai",
        True,
        "",
        dict(pool="tok"),
    ),
    Architecture(
        "open_clip",
        "VisionTransformer",
        "attention-pooled towers (CoCa)",
        "coca_ViT-B-32",
        False,
        "reads attention-pooled tokens, not the [class] token",
        dict(pool="attn"),
    ),
)


def build_small(spec: dict) -> nn.Module:
    import open_clip

    vision = dict(image_size=32, layers=2, width=48, head_width=12, patch_size=8)
    if spec["pool"] == "attn":
        vision.update(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=4)
    text = dict(context_length=8, vocab_size=50, width=32, heads=4, layers=1)
    return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).visual.eval()


def names(pattern: str) -> list[str]:
    """open_clip's model names matching ``pattern`` (none without open_clip)."""
    try:
        import open_clip
    except ImportError:
        return []
    return [name for name in open_clip.list_models() if fnmatch.fnmatch(name, pattern)]


def verdicts(names: list[str]) -> Iterator[tuple[str, str, str]]:
    """From each model's configuration: open_clip's names need no building."""
    import open_clip

    for name in names:
        vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
        if "timm_model_name" in vision and vision.get("timm_model_name"):
            reason = "a timm trunk inside open_clip; load the timm model by name instead"
        elif not isinstance(vision.get("layers"), int):
            reason = "a ResNet image tower, not a ViT"
        elif vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok":
            reason = "reads pooled tokens, not the [class] token"
        else:
            reason = None
        yield name, "VisionTransformer", "yes" if reason is None else f"no: {reason}"


register_family(
    Family("open_clip", load, ARCHITECTURES, build_small, names=names, verdicts=verdicts, takes_texts=True)
)
