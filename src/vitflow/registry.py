"""Registries filled where things are defined (as timm's ``@register_model``): explanation
methods (``vitflow.methods``) and metrics (``vitflow.metrics``). ``evaluate``, the
command line's choices and the README's tables read them; nothing keeps a parallel list."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Entry:
    """A registered function, its name (or name pattern) and what the registry records about it."""

    name: str
    fn: Callable[..., Any]
    info: dict = field(default_factory=dict)
    pattern: bool = False

    @property
    def summary(self) -> str:
        """The first line of the function's docstring."""
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


class Registry:
    """Named functions of one kind. ``register(name, **info)`` is a decorator; a ``pattern=True``
    name is a regular expression whose groups are passed to the function after its arguments
    (e.g. ``daam_from_(\\d+)``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, pattern: bool = False, **info: Any) -> Callable:
        def add(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, fn, info, pattern)
            return fn

        return add

    def names(self) -> list[str]:
        """The fixed names, in registration order (patterns left out)."""
        return [e.name for e in self._entries.values() if not e.pattern]

    def entries(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def lookup(self, name: str) -> tuple[Entry, tuple[str, ...]]:
        """The entry for ``name`` and the pattern's groups (empty for a fixed name)."""
        entry = self._entries.get(name)
        if entry is not None and not entry.pattern:
            return entry, ()
        for entry in self._entries.values():
            match = re.fullmatch(entry.name, name) if entry.pattern else None
            if match:
                return entry, match.groups()
        known = ", ".join(self.names() + [e.info.get("display", e.name) for e in self._entries.values()
                                          if e.pattern])  # fmt: skip
        raise ValueError(f"unknown {self.kind} {name!r}; known: {known}")

    def __contains__(self, name: str) -> bool:
        try:
            self.lookup(name)
        except ValueError:
            return False
        return True

    def call(self, name: str, *args: Any) -> Any:
        entry, groups = self.lookup(name)
        return entry.fn(*args, *groups)


METHODS = Registry("method")
METRICS = Registry("metric")


def register_method(name: str, *, pattern: bool = False, **info: Any) -> Callable:
    """Register an explanation method ``fn(inputs: MethodInputs[, *groups]) -> (B, h, w)`` maps
    (see ``vitflow.methods.inputs.MethodInputs``). ``info``: ``input_grad=True`` when it
    reads ``dY/dx`` (``inputs.trace.input_grad``, ``inputs.daam_lrp.input_grad``);
    ``full_attention=True`` when it propagates token-to-token attention through every block
    (not defined for class-attention models such as CaiT);
    ``flow=True`` when it returns its attention flow ``(B, L, h, w)`` instead, the map after every
    block (the method's map is the last); ``lrp=True`` when it needs CP-LRP's hooks,
    ``readout=True`` a readout of intermediate blocks, ``token_transform=True`` what each token
    writes into the residual stream (one linear output projection); ``display`` names a pattern
    in listings."""
    return METHODS.register(name, pattern=pattern, **info)


def register_metric(
    name: str, *, higher_is_better: bool, needs_mask: bool, per_block: bool = False
) -> Callable:
    """Register a metric ``fn(maps (B, h, w), context: ScoringContext) -> (B,)`` scores. ``per_block``:
    computed for DAAM's map after every block by default."""
    info = {"higher_is_better": higher_is_better, "needs_mask": needs_mask, "per_block": per_block}
    return METRICS.register(name, **info)


def markdown(registry: Registry) -> str:
    """The registry as a Markdown table (the README's tables are this, checked by a test)."""
    if registry is METRICS:
        rows = ["| metric | better | needs masks | what it measures |", "|---|---|---|---|"]
        for e in registry.entries():
            better = "higher" if e.info["higher_is_better"] else "lower"
            masks = "yes" if e.info["needs_mask"] else "no"
            rows.append(f"| `{e.name}` | {better} | {masks} | {e.summary} |")
    else:
        rows = [f"| {registry.kind} | what it is |", "|---|---|"]
        rows += [f"| `{e.info.get('display', e.name)}` | {e.summary} |" for e in registry.entries()]
    return "\n".join(rows) + "\n"
