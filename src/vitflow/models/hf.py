"""The Hugging Face transformers family: ``--model hf:NAME_OR_DIRECTORY`` (``transformers:`` too),
the saved model class, its image processor and ``id2label`` names; its catalogue rows."""

from __future__ import annotations

from torch import nn

from vitflow.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from vitflow.models.checkpoints import ModelLoadError, check_hub, offline_error, quiet_hub
from vitflow.models.family import Architecture, Family, LoadedModel, register_family


def load(name, checkpoint, headless, texts, img_size=None) -> LoadedModel:
    try:
        import transformers
    except ImportError:
        raise ModelLoadError("hf: models need transformers: pip install transformers") from None
    if checkpoint is not None:
        raise ModelLoadError(
            "hf: models load from a hub name or a local directory; give the directory as hf:PATH"
        )
    hint = "download the model with its config into a directory and pass hf:DIRECTORY"
    import os

    check_hub(f"hf:{name}", None if os.path.isdir(name) else name, ("config.json",), hint)
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
        raise offline_error(f"hf:{name}", error, hint) from None
    mean = tuple(getattr(processor, "image_mean", IMAGENET_MEAN))
    std = tuple(getattr(processor, "image_std", IMAGENET_STD))

    def transform(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    names = id2label_names(model)
    config = {"processor": type(processor).__name__, "mean": mean, "std": std}
    return LoadedModel(model.eval(), Preprocessing(transform, mean, std, config), names, f"hf:{name}")


def id2label_names(model: nn.Module) -> list[str] | None:
    """A transformers classifier's class names (``config.id2label``, in index order); ``None``
    for a model without a classifier head or labels."""
    labels = getattr(getattr(model, "config", None), "id2label", None)
    if not isinstance(labels, dict) or not labels or getattr(model, "classifier", None) is None:
        return None
    try:
        return [str(labels[i]) for i in range(len(labels))]
    except KeyError:
        return None


ARCHITECTURES = (
    Architecture(
        "transformers",
        "ViTForImageClassification",
        "ViT (also ViTModel)",
        "google/vit-base-patch16-224",
        True,
        "",
        dict(cls="ViTForImageClassification"),
    ),
    Architecture(
        "transformers",
        "DeiTForImageClassificationWithTeacher",
        "DeiT, distilled DeiT",
        "facebook/deit-small-distilled-patch16-224",
        True,
        "",
        dict(cls="DeiTForImageClassificationWithTeacher"),
    ),
    Architecture(
        "transformers",
        "Dinov2Model",
        "DINOv2 (also Dinov2ForImageClassification)",
        "facebook/dinov2-small",
        True,
        "",
        dict(cls="Dinov2Model"),
    ),
    Architecture(
        "transformers",
        "Dinov2WithRegistersModel",
        "DINOv2 with registers",
        "facebook/dinov2-with-registers-small",
        True,
        "",
        dict(cls="Dinov2WithRegistersModel"),
    ),
    Architecture(
        "transformers",
        "CLIPVisionModelWithProjection",
        "CLIP vision tower (also CLIPVisionModel)",
        "openai/clip-vit-base-patch32",
        True,
        "",
        dict(cls="CLIPVisionModelWithProjection"),
    ),
    Architecture(
        "transformers",
        "SwinForImageClassification",
        "Swin",
        "microsoft/swin-tiny-patch4-window7-224",
        False,
        "hierarchical, no [class] token",
        dict(cls="SwinForImageClassification"),
    ),
)


_HF_SMALL = dict(
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    image_size=32,
    patch_size=8,
)


def build_small(spec: dict) -> nn.Module:
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
            num_labels=5,  # type: ignore[call-arg]  # a PretrainedConfig keyword the stubs leave out
        )
    else:
        config = cls.config_class(**_HF_SMALL, num_labels=5)
    return cls(config).eval()


register_family(Family("transformers", load, ARCHITECTURES, build_small))
