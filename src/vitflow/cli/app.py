"""``vitflow app``: the local web app around one loaded model."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitflow.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    add_model_options,
    load_named_model,
    one_line,
    positive_int,
    resolve_device,
    say_error,
    usage_errors,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    app = commands.add_parser(
        "app",
        help="a local web app: upload an image, pick the class, move through the blocks (needs vitflow[app])",
        description="Starts a Gradio app on HOST:PORT (default 127.0.0.1:7860, this machine only). The model "
        "is loaded once and shared; requests are queued, so the model never runs twice at once.",
    )
    add_model_options(app, "the bundled demo ViT")
    app.add_argument("--text", action="append", metavar="PROMPT", help="open_clip models: one text per class")
    app.add_argument("--bank", metavar="FILE", help="memory bank for a backbone without classifier")
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    app.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    app.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    app.add_argument("--display-size", type=positive_int, metavar="PX", help="long side of the pictures")
    app.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from vitflow.app import Session, build_app

        _, device = resolve_device(args.device)
        loaded = load_named_model(args, headless=args.bank is not None)
        bank = None
        if args.bank:
            from vitflow.targets import MemoryBank

            bank = MemoryBank.load(args.bank)
            bank.check_model(loaded.model)
        session = Session(loaded, bank, device, args.display_size)
        examples = _examples() if args.model is None else None
        app = build_app(session, examples)
    except ImportError as error:
        say_error(one_line(error))
        return EXIT_USAGE
    except usage_errors() as error:
        say_error(one_line(error))
        return EXIT_USAGE
    print(f"vitflow app: {loaded.label} on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    app.launch(server_name=args.host, server_port=args.port, quiet=True, footer_links=[])
    return EXIT_OK


def _examples() -> list[str]:
    """Three held-out demo scenes as example files (the demo ViT never saw test stream seed 3)."""
    import tempfile

    from PIL import Image

    from vitflow.data.scenes import generate_scene

    folder = Path(tempfile.mkdtemp(prefix="vitflow-examples-"))
    paths = []
    for i in range(3):
        path = folder / f"scene_{i}.png"
        Image.fromarray(generate_scene(3, i).image).save(path)
        paths.append(str(path))
    return paths
