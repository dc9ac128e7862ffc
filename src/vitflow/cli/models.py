"""``vitflow models [PATTERN]``: which architectures DAAM explains."""

from __future__ import annotations

import argparse

from vitflow.cli.common import EXIT_OK, EXIT_USAGE, say_error
from vitflow.models import FAMILIES


def add_parser(commands: argparse._SubParsersAction) -> None:
    listed = ", ".join(name for name, family in FAMILIES.items() if family.names is not None)
    models = commands.add_parser(
        "models",
        help=f"which architectures DAAM explains ({', '.join(FAMILIES)})",
        description="Without PATTERN: the supported-model table (one row per architecture class, each "
        f"tested). With PATTERN (shell-style, e.g. 'beit*' or 'vit_small_*'): every matching {listed} "
        "name with its class and verdict (a prefix as in --model, e.g. 'torchvision:vit_*', keeps to one "
        "family); timm names are built on the meta device (no download, about "
        "0.1 s each).",
    )
    models.add_argument("pattern", nargs="?", metavar="PATTERN")
    models.add_argument("--markdown", action="store_true", help="the table as Markdown (as in the docs)")
    models.set_defaults(handler=run)


#: the terminal width the output keeps to
WIDTH = 100


def _table() -> None:
    """The supported-model table, drawn by rich within ``WIDTH`` columns (cells wrap)."""
    from rich.console import Console
    from rich.table import Table

    from vitflow.models.catalogue import architectures

    table = Table(show_lines=False, expand=False)
    table.add_column("family", no_wrap=True)
    for column, ratio in (("class", 2), ("covers", 3), ("e.g.", 2), ("DAAM", 2)):
        table.add_column(column, ratio=ratio, overflow="fold")
    for a in architectures():
        status = ("yes" + (f", {a.note}" if a.note else "")) if a.supported else f"refused: {a.note}"
        table.add_row(a.family, a.cls, a.covers, a.example, status)
    Console(width=WIDTH, highlight=False, soft_wrap=False).print(table)


def _row(family: str, name: str, cls: str, status: str, width: int) -> str:
    """One pattern-listing row within ``WIDTH`` columns: a long verdict wraps under itself."""
    import textwrap

    head = f"{family:<12} {name:<{width}}  {cls:<26} "
    room = max(16, WIDTH - len(head))
    lines = textwrap.wrap(status, room) or [""]
    return "\n".join([head + lines[0], *(" " * len(head) + line for line in lines[1:])])


def run(args: argparse.Namespace) -> int:
    from vitflow.models import catalogue

    if not args.pattern:
        if args.markdown:
            print(catalogue.markdown(), end="")
        else:
            _table()
        return EXIT_OK
    pattern, only = args.pattern, None
    if ":" in pattern:  # a --model spelling: that family's names only (hf:, torchvision:vit_b_*)
        from vitflow.models.load import ModelLoadError, split_spec

        try:
            only, pattern = split_spec(pattern)
        except ModelLoadError as error:
            say_error(str(error))
            return EXIT_USAGE
    listings = [
        (name, family, family.names(pattern))
        for name, family in FAMILIES.items()
        if family.names is not None and family.verdicts is not None and only in (None, name)
    ]
    every = [model for _, _, names in listings for model in names]
    if only is not None and not listings:
        say_error(f"{only} names are not listed by pattern (any hub name works with --model "
                  f"{args.pattern.partition(':')[0]}:NAME); run `vitflow models` for the supported classes")
        return EXIT_USAGE
    if not every:
        say_error(f"no architecture matches {args.pattern!r}; run `vitflow models` for the table")
        return EXIT_USAGE
    width = max(len(name) for name in every)
    print(_row("family", "name", "class", "DAAM", width))
    supported = 0
    for family_name, family, names in listings:
        assert family.verdicts is not None  # filtered above
        for name, cls, status in family.verdicts(names):  # printed as they are built
            supported += status.startswith("yes")
            print(_row(family_name, name, cls, status, width), flush=True)
    print(f"{supported} of {len(every)} supported")
    return EXIT_OK
