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
        "name with its class and verdict; timm names are built on the meta device (no download, about "
        "0.1 s each).",
    )
    models.add_argument("pattern", nargs="?", metavar="PATTERN")
    models.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vitflow.models import catalogue

    if not args.pattern:
        print(catalogue.markdown(), end="")
        return EXIT_OK
    listings = [
        (name, family, family.names(args.pattern))
        for name, family in FAMILIES.items()
        if family.names is not None and family.verdicts is not None
    ]
    every = [model for _, _, names in listings for model in names]
    if not every:
        say_error(f"no architecture matches {args.pattern!r}; run `vitflow models` for the table")
        return EXIT_USAGE
    width = max(len(name) for name in every)
    supported = 0
    for family_name, family, names in listings:
        assert family.verdicts is not None  # filtered above
        for name, cls, status in family.verdicts(names):  # printed as they are built
            supported += status.startswith("yes")
            print(f"{family_name:<12} {name:<{width}}  {cls:<26} {status}", flush=True)
    print(f"{supported} of {len(every)} supported")
    return EXIT_OK
