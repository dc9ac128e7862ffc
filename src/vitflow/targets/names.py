"""Classes by name: ``--target tabby`` or ``target="tabby"`` against a model's own label names
(timm's ImageNet descriptions, ``id2label``, torchvision's categories, open_clip's texts, a bank's
class names), case-, space-, ``_`` and ``-``-insensitive; each comma-separated synonym of a label
(``"tabby, tabby cat"``) matches; a miss suggests the closest names."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence


def _key(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text).strip().lower()


def _synonyms(label: str) -> list[str]:
    return [k for k in (_key(part) for part in [label, *label.split(",")]) if k]


def class_index(target: str | int, names: Sequence[str] | None) -> int:
    """The class index ``target`` names: an int (or a string of digits) as it is, else the label
    in ``names`` it matches. Raises ``ValueError`` with the close matches on a miss, or when the
    model has no names."""
    if isinstance(target, int):
        return target
    text = str(target).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    if not names:
        raise ValueError(
            f"target {text!r}: this model has no class names; give the class index (an integer)"
        )
    wanted = _key(text)
    exact = [i for i, label in enumerate(names) if wanted == _key(label)]
    matches = exact or [i for i, label in enumerate(names) if wanted in _synonyms(label)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = "; ".join(f"{i}: {names[i]}" for i in matches[:5])
        raise ValueError(f"target {text!r} names {len(matches)} classes ({shown}); give the index")
    vocabulary = {s: i for i, label in enumerate(names) for s in _synonyms(label)}
    close = difflib.get_close_matches(wanted, list(vocabulary), n=4, cutoff=0.6)
    hint = "; did you mean " + ", ".join(f"{c!r} ({vocabulary[c]})" for c in close) + "?" if close else ""
    raise ValueError(f"target {text!r} is none of this model's {len(names)} class names{hint}")
