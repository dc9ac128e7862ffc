"""Models by name, for the command line: ``timm:NAME`` (or plain ``NAME``), ``hf:NAME_OR_PATH``,
``torchvision:NAME``, ``open_clip:NAME[/PRETRAINED]``, each with its own preprocessing and class
names. Hub downloads happen only here; offline they fail with one line that says what to do."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from vitflow.data.preprocess import Preprocessing
from vitflow.loading import (
    ModelLoadError,
    class_names,
    load_state_dict_strict,
    load_timm_model,
    quiet_hub,
    read_state_dict,
)

FAMILIES = ("timm", "hf", "torchvision", "open_clip")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    model: nn.Module
    preprocessing: Preprocessing
    names: list[str] | None
    label: str
    target: object = None  # a target the model implies (open_clip with --text), else None
    extra: dict = field(default_factory=dict)


def split_spec(spec: str) -> tuple[str, str]:
    """``"hf:google/vit-base-patch16-224"`` -> ``("hf", "google/vit-base-patch16-224")``; no prefix: timm."""
    family, sep, name = spec.partition(":")
    if not sep:
        return "timm", spec
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {family!r} in {spec!r}; use one of {', '.join(FAMILIES)}")
    if not name:
        raise ModelLoadError(f"{spec!r} names no model")
    return family, name


def _offline(spec: str, error: Exception, hint: str) -> ModelLoadError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelLoadError(
        f"could not load {spec!r} ({type(error).__name__}: {reason[:160]}); offline? {hint}"
    )


def _timm(name, checkpoint, headless, texts):
    model = load_timm_model(name, checkpoint, **({"num_classes": 0} if headless else {}))
    return LoadedModel(model, Preprocessing.for_timm(model), None if headless else class_names(model), name)


def _hf(name, checkpoint, headless, texts):
    try:
        import transformers
    except ImportError:
        raise ModelLoadError("hf: models need transformers: pip install transformers") from None
    if checkpoint is not None:
        raise ModelLoadError(
            "hf: models load from a hub name or a local directory; give the directory as hf:PATH"
        )
    hint = "download the model with its config into a directory and pass hf:DIRECTORY"
    try:
        with quiet_hub():
            config = transformers.AutoConfig.from_pretrained(name)
            architectures = config.architectures or []
            if config.model_type == "clip":
                model = transformers.CLIPVisionModelWithProjection.from_pretrained(name)
            elif not headless and any("ImageClassification" in a for a in architectures):
                model = transformers.AutoModelForImageClassification.from_pretrained(name)
            else:
                model = transformers.AutoModel.from_pretrained(name)
            processor = transformers.AutoImageProcessor.from_pretrained(name)
    except Exception as error:
        raise _offline(f"hf:{name}", error, hint) from None
    mean = tuple(getattr(processor, "image_mean", IMAGENET_MEAN))
    std = tuple(getattr(processor, "image_std", IMAGENET_STD))

    def transform(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    labels = getattr(model.config, "id2label", None)
    names = [labels[i] for i in range(len(labels))] if labels and hasattr(model, "classifier") else None
    config = {"processor": type(processor).__name__, "mean": mean, "std": std}
    return LoadedModel(model.eval(), Preprocessing(transform, mean, std, config), names, f"hf:{name}")


def _torchvision(name, checkpoint, headless, texts):
    import torchvision
    from torchvision import transforms

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ModelLoadError(f"torchvision has no model named {name!r}; e.g. torchvision:vit_b_16") from None
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        head = state.get("heads.head.weight")
        model = builder(weights=None, num_classes=head.shape[0] if head is not None else 1000)
        load_state_dict_strict(model, state, f"checkpoint {checkpoint}")
        weights = None
    else:
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
            with quiet_hub():
                model = builder(weights=weights)
        except Exception as error:
            raise _offline(f"torchvision:{name}", error, "pass --checkpoint FILE with the weights") from None
    if weights is not None:
        transform = weights.transforms()
        mean, std = tuple(transform.mean), tuple(transform.std)
        names = list(weights.meta.get("categories", [])) or None
    else:  # torchvision's ImageNet evaluation defaults
        mean, std, names = IMAGENET_MEAN, IMAGENET_STD, None
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


def _open_clip(name, checkpoint, headless, texts):
    try:
        import open_clip
    except ImportError:
        raise ModelLoadError("open_clip: models need open_clip: pip install open_clip_torch") from None
    architecture, _, pretrained = name.partition("/")
    try:
        with quiet_hub():
            model, _, preprocess = open_clip.create_model_and_transforms(
                architecture, pretrained=None if checkpoint else (pretrained or None)
            )
    except Exception as error:
        raise _offline(f"open_clip:{name}", error, "pass --checkpoint FILE (.safetensors or .pth)") from None
    if checkpoint is not None:
        load_state_dict_strict(model, read_state_dict(checkpoint), f"checkpoint {checkpoint}")
    model.eval()
    visual = model.visual
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    preprocessing = Preprocessing(
        preprocess, mean, std, {"transform": repr(preprocess), "mean": mean, "std": std}
    )
    target = None
    if texts:
        from vitflow.targets import SimilarityTarget

        tokenizer = open_clip.get_tokenizer(architecture)
        with torch.no_grad():
            embeddings = model.encode_text(tokenizer(list(texts)))
        target = SimilarityTarget(embeddings)
    elif not headless:
        raise ModelLoadError(
            "open_clip models output image embeddings: give the texts to compare with "
            "(--text 'a photo of a cat' --text 'a photo of a dog') or a memory bank (--bank)"
        )
    return LoadedModel(visual, preprocessing, list(texts) if texts else None, f"open_clip:{name}", target)


_LOADERS = {"timm": _timm, "hf": _hf, "torchvision": _torchvision, "open_clip": _open_clip}


def load_model(
    spec: str, checkpoint: str | os.PathLike | None = None, *, headless: bool = False, texts=None
) -> LoadedModel:
    """The model ``spec`` names, in eval mode, with its preprocessing and class names.

    Args:
        spec: ``timm:NAME`` / ``NAME``, ``hf:NAME_OR_PATH``, ``torchvision:NAME``,
            ``open_clip:NAME[/PRETRAINED]``.
        checkpoint: weights to load instead of downloading (timm, torchvision, open_clip).
        headless: drop the classifier (for memory-bank features).
        texts: prompts for an open_clip model: its target becomes a :class:`SimilarityTarget`.
    """
    family, name = split_spec(spec)
    if texts and family != "open_clip":
        raise ModelLoadError("--text applies to open_clip models (image-text similarity)")
    return _LOADERS[family](name, checkpoint, headless, texts)
