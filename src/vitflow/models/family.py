"""The record of one model family: everything vitflow knows about loading and listing it.

A family is one file in ``vitflow/models/`` (plus its adapter in ``vitflow/adapters/``) that
calls ``register_family`` with a ``Family``: the loader behind ``--model PREFIX:NAME``,
the catalogue rows behind ``vitflow models`` and the README table, the small random build the
catalogue test explains, and the listing of the family's own model names. Nothing else in the
package lists families.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from vitflow.data.preprocess import Preprocessing


@dataclass
class LoadedModel:
    """A model in eval mode, its preprocessing, its class names (``None``: unnamed) and the label
    manifests record; ``extra`` is free-form per family."""

    model: nn.Module
    preprocessing: Preprocessing
    names: list[str] | None
    label: str
    extra: dict = field(default_factory=dict)


class Loader(Protocol):
    def __call__(
        self,
        name: str,
        checkpoint: str | None,
        headless: bool,
        texts: Sequence[str] | None,
        img_size: int | None = None,
    ) -> LoadedModel: ...


@dataclass(frozen=True)
class Architecture:
    """One architecture class of one family, as the catalogue test builds it."""

    family: str  # the adapter family's name: timm, transformers, torchvision, open_clip, ...
    cls: str  # the model class
    covers: str  # what users know it as
    example: str  # a name users pass (timm / torchvision / open_clip name, hub id)
    supported: bool
    note: str = ""  # how to use it, or why it is refused
    # the small configuration the catalogue test builds (the family's ``build_small`` reads it)
    small: dict = field(default_factory=dict)


#: ``(name, class name, status)`` per name, ``status`` ``"yes"``, ``"yes, <how>"`` or ``"no: <reason>"``
Verdicts = Callable[[list[str]], Iterator[tuple[str, str, str]]]


@dataclass(frozen=True)
class Family:
    """One model family. ``name`` is its adapter's ``family`` (the ``--model`` prefix; the
    adapter's aliases work too).

    ``load(name, checkpoint, headless, texts, img_size=None)`` returns a ``LoadedModel``;
    ``architectures`` are its catalogue rows; ``build_small(row.small)`` builds a row's small
    random model; ``names(pattern)`` lists the family's model names matching a glob and
    ``verdicts(names)`` says for each whether DAAM explains it (``vitflow models PATTERN``;
    ``None``: not listed); ``takes_img_size`` / ``takes_texts``: whether ``--img-size`` /
    ``--text`` apply.
    """

    name: str
    load: Loader
    architectures: tuple[Architecture, ...] = ()
    build_small: Callable[[dict], nn.Module] | None = None
    names: Callable[[str], list[str]] | None = None
    verdicts: Verdicts | None = None
    takes_img_size: bool = False
    takes_texts: bool = False


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add (or replace) a family; the catalogue lists families in registration order."""
    FAMILIES[family.name] = family
    return family
