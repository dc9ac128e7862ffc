"""``vitflow`` command line: parses arguments, calls the library, reports. No method logic here.

One module per command, each with ``add_parser(commands)`` (its options; the parser's defaults
name its handler) and ``run(args) -> int``. ``COMMANDS`` lists them in ``--help`` order;
the docs pages are generated from the parsers (``scripts/make_docs.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

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


#: what a scheduler or a terminal sends to stop a run; each stops it as Ctrl+C does
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """While inside, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` as SIGINT does; yields the list
    that receives the signal's number. Outside the main thread (where Python cannot take
    signals) nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def stop(signum: int, _frame) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a run stopped by SIGINT, SIGTERM or SIGHUP says so in one line and exits
    with 128 + the signal's number (130, 143, 129), its finished outputs complete."""
    from vitflow.runs import distributed

    args = build_parser().parse_args(argv)
    with _stop_on_signals() as received:
        try:
            return args.handler(args)
        except KeyboardInterrupt:
            signum = received[0] if received else signal.SIGINT
            common.say_error(
                f"stopped by {signal.Signals(signum).name}; every image folder written is complete (a "
                "folder appears whole or not at all): rerun the same command to finish the rest"
            )
            return 128 + int(signum)
        except BrokenPipeError:  # the reader went away (`vitflow models 'vit*' | head`): nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit either
            return 128 + int(signal.SIGPIPE)
        finally:
            distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
