"""Models by name, for the command line: ``timm:NAME`` (or plain ``NAME``), ``hf:NAME_OR_PATH``
(``transformers:`` too), ``torchvision:NAME``, ``open_clip:NAME[/PRETRAINED]``, each with its own
preprocessing and class names. The prefixes are the adapters' family names and aliases
(``vitflow.adapters.family_names``) of the registered families
(``vitflow.models.family``). Hub downloads happen only in the families' loaders; offline they
fail with one line that says what to do."""

from __future__ import annotations

import os
from collections.abc import Sequence

from vitflow.adapters import family_names
from vitflow.models.checkpoints import ModelLoadError
from vitflow.models.family import FAMILIES, LoadedModel


def model_class_names(model) -> list[str] | None:
    """A loaded model's own class names, where it carries them: ``config.id2label`` (transformers)
    or timm's ImageNet descriptions; ``None`` otherwise (pass them to ``DAAM(class_names=...)``)."""
    from vitflow.models.hf import id2label_names

    names = id2label_names(model)
    if names is not None:
        return names
    if type(model).__module__.startswith("timm."):
        from vitflow.models.timm import class_names

        return class_names(model)
    return None


def model_prefixes() -> list[str]:
    """The ``--model`` prefixes: every family name and alias of a registered adapter with a family."""
    return [name for name, cls in family_names().items() if cls.family in FAMILIES]


def split_spec(spec: str) -> tuple[str, str]:
    """``"hf:google/vit-base-patch16-224"`` -> ``("transformers", "google/vit-base-patch16-224")``;
    no prefix: timm. Returns the adapter family's own name."""
    prefix, sep, name = spec.partition(":")
    if not sep:
        return "timm", spec
    names = family_names()
    if prefix not in names or names[prefix].family not in FAMILIES:
        raise ModelLoadError(
            f"unknown model family {prefix!r} in {spec!r}; use one of {', '.join(model_prefixes())}"
        )
    if not name:
        raise ModelLoadError(f"{spec!r} names no model")
    return names[prefix].family, name


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
            ``open_clip:NAME[/PRETRAINED]``, or a registered family's ``PREFIX:NAME``.
        checkpoint: weights to load instead of downloading (timm, torchvision, open_clip).
        headless: drop the classifier (for memory-bank features).
        texts: prompts for an open_clip model: it becomes a zero-shot
            ``TextClassifier`` with one class per text.
        img_size: the input size for timm and torchvision models (default: read from the
            checkpoint's position embedding, else the architecture's own).
    """
    name_of_family, name = split_spec(spec)
    family = FAMILIES[name_of_family]
    if texts and not family.takes_texts:
        with_texts = [f.name for f in FAMILIES.values() if f.takes_texts]
        raise ModelLoadError(f"--text applies to {' and '.join(with_texts)} models (image-text similarity)")
    if img_size is not None and not family.takes_img_size:
        sized = [f.name for f in FAMILIES.values() if f.takes_img_size]
        raise ModelLoadError(f"--img-size applies to {' and '.join(sized)} models; {family.name} models take "
                             "their size from their configuration")  # fmt: skip
    path = None if checkpoint is None else os.fspath(checkpoint)
    return family.load(name, path, headless, texts, img_size=img_size)
