"""``vitflow`` command line: parses arguments, calls the library, reports. No method logic here.

One module per command, each with ``add_parser(commands)`` (its options; the parser's defaults
name its handler) and ``run(args) -> int``. :data:`COMMANDS` lists them in ``--help`` order;
the docs pages are generated from the parsers (``scripts/make_docs.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vitflow.cli import app, bank, common, demo, evaluate, explain, models, scenes
from vitflow.version import __version__

#: the command modules, in the order ``vitflow --help`` lists them
COMMANDS = (explain, demo, scenes, evaluate, bank, app, models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitflow",
        description="Dynamic Accumulated Attention Maps: how a Vision Transformer reaches its decision, "
        "block by block.",
    )
    parser.add_argument("--version", action="version", version=f"vitflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from vitflow.runs import distributed

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        common.say_error(
            "interrupted; finished outputs are complete (files are written atomically), rerun to go on"
        )
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
