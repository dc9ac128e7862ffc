"""Models by name, for the command line: ``timm:NAME`` (or plain ``NAME``), ``hf:NAME_OR_PATH``
(``transformers:`` too), ``torchvision:NAME``, ``open_clip:NAME[/PRETRAINED]``, each with its own
preprocessing and class names. The prefixes are the adapters' family names and aliases
(:func:`vitflow.adapters.family_names`); a loader is registered here per family. Hub downloads
happen only here; offline they fail with one line that says what to do."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from vitflow.adapters import TextClassifier, family_names
from vitflow.data.preprocess import Preprocessing
from vitflow.loading import (
    ModelLoadError,
    class_names,
    load_state_dict_strict,
    load_timm_model,
    quiet_hub,
    read_state_dict,
)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    model: nn.Module
    preprocessing: Preprocessing
    names: list[str] | None
    label: str
    extra: dict = field(default_factory=dict)


Loader = Callable[..., LoadedModel]
_LOADERS: dict[str, Loader] = {}


def register_loader(family: str) -> Callable[[Loader], Loader]:
    """Register the loader of an adapter family (``family`` is the adapter's ``family`` name)."""

    def add(loader: Loader) -> Loader:
        _LOADERS[family] = loader
        return loader

    return add


def model_prefixes() -> list[str]:
    """The ``--model`` prefixes: every family name and alias of a registered adapter with a loader."""
    return [name for name, cls in family_names().items() if cls.family in _LOADERS]


def split_spec(spec: str) -> tuple[str, str]:
    """``"hf:google/vit-base-patch16-224"`` -> ``("transformers", "google/vit-base-patch16-224")``;
    no prefix: timm. Returns the adapter family's own name."""
    prefix, sep, name = spec.partition(":")
    if not sep:
        return "timm", spec
    names = family_names()
    if prefix not in names or names[prefix].family not in _LOADERS:
        raise ModelLoadError(
            f"unknown model family {prefix!r} in {spec!r}; use one of {', '.join(model_prefixes())}"
        )
    if not name:
        raise ModelLoadError(f"{spec!r} names no model")
    return names[prefix].family, name


def _offline(spec: str, error: Exception, hint: str) -> ModelLoadError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelLoadError(
        f"could not load {spec!r} ({type(error).__name__}: {reason[:160]}); offline? {hint}"
    )


@register_loader("timm")
def _timm(name, checkpoint, headless, texts, img_size=None):
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
    import inspect

    from vitflow.zoo import meta_timm

    try:
        model = meta_timm(name.split(".")[0])
    except Exception:  # noqa: BLE001 - the real build reports the problem
        return {}
    if getattr(model, "cls_token", None) is None or getattr(model, "global_pool", "token") != "avg":
        return {}
    kwargs = {"global_pool": "token"}
    if isinstance(getattr(model, "fc_norm", None), nn.Module) and not isinstance(model.fc_norm, nn.Identity):
        params = inspect.signature(type(model).__init__).parameters
        flag = next((p for p in ("use_fc_norm", "fc_norm") if p in params), None)
        if flag is not None:
            kwargs[flag] = True
    return kwargs


@register_loader("transformers")
def _hf(name, checkpoint, headless, texts, img_size=None):
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
            named = getattr(transformers, architectures[0], None) if architectures else None
            classifier = any("ImageClassification" in a for a in architectures)
            if config.model_type == "clip":  # a whole CLIP: its vision tower and projection
                model = transformers.CLIPVisionModelWithProjection.from_pretrained(name)
            elif classifier and not headless:
                model = transformers.AutoModelForImageClassification.from_pretrained(name)
            elif named is not None and not classifier:  # the saved class, e.g. a projection head kept
                model = named.from_pretrained(name)
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


@register_loader("torchvision")
def _torchvision(name, checkpoint, headless, texts, img_size=None):
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


@register_loader("open_clip")
def _open_clip(name, checkpoint, headless, texts, img_size=None):
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
    label = f"open_clip:{name}"
    if headless:  # a backbone for memory banks: the image embedding
        return LoadedModel(visual, preprocessing, None, label)
    tokenizer = open_clip.get_tokenizer(architecture)
    with torch.no_grad():
        embeddings = model.encode_text(tokenizer(list(texts)))
    scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0
    return LoadedModel(TextClassifier(visual, embeddings, scale).eval(), preprocessing, list(texts), label)


def load_model(
    spec: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    headless: bool = False,
    texts: Sequence[str] | None = None,
    img_size: int | None = None,
) -> LoadedModel:
    """The model ``spec`` names, in eval mode, with its preprocessing and class names.

    Args:
        spec: ``timm:NAME`` / ``NAME``, ``hf:NAME_OR_PATH``, ``torchvision:NAME``,
            ``open_clip:NAME[/PRETRAINED]``.
        checkpoint: weights to load instead of downloading (timm, torchvision, open_clip).
        headless: drop the classifier (for memory-bank features).
        texts: prompts for an open_clip model: it becomes a zero-shot
            :class:`~vitflow.adapters.TextClassifier` with one class per text.
        img_size: the input size for timm and torchvision models (default: read from the
            checkpoint's position embedding, else the architecture's own).
    """
    family, name = split_spec(spec)
    if texts and family != "open_clip":
        raise ModelLoadError("--text applies to open_clip models (image-text similarity)")
    if img_size is not None and family not in ("timm", "torchvision"):
        raise ModelLoadError(f"--img-size applies to timm and torchvision models; {family} models take "
                             "their size from their configuration")  # fmt: skip
    return _LOADERS[family](name, checkpoint, headless, texts, img_size=img_size)
