"""Which architectures vitflow explains, by family and class (``vitflow models``).

The rows are the families' own (``Family``, one file each): the
README's supported-model table is ``markdown`` of them (a test compares them), and a test
builds every row's small configuration (``pretrained=False``) and checks that DAAM runs on a
supported row and refuses a refused one with the row's reason. ``verdict`` answers for a
model instance.
"""

from __future__ import annotations

from torch import nn

from vitflow.models.family import FAMILIES, Architecture


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


def architectures() -> list[Architecture]:
    """Every family's rows, families in registration order."""
    return [row for family in FAMILIES.values() for row in family.architectures]


def markdown() -> str:
    """The README's supported-model table."""
    rows = ["| family | class | covers | e.g. | DAAM |", "|---|---|---|---|---|"]
    for a in architectures():
        status = ("yes" + (f", {a.note}" if a.note else "")) if a.supported else f"refused: {a.note}"
        rows.append(f"| {a.family} | `{a.cls}` | {a.covers} | `{a.example}` | {status} |")
    return "\n".join(rows) + "\n"


def build_small(arch: Architecture) -> nn.Module:
    """The row's small random configuration (what the catalogue test explains)."""
    family = FAMILIES[arch.family]
    if family.build_small is None:
        raise ValueError(f"the {arch.family} family registers no small build for its catalogue rows")
    return family.build_small(dict(arch.small))
