"""``vitflow explain``: explain image files and folders, one bundle per image."""

from __future__ import annotations

import argparse

from vitflow.cli.common import (
    BUNDLE_FILES,
    EXIT_USAGE,
    add_model_options,
    add_render_options,
    explain_into,
    positive_int,
    say_error,
    say_note,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    explain = commands.add_parser(
        "explain",
        help="explain images with a ViT: the final map on each photo, a viewer of the flow, a manifest",
        description=f"Explain each IMAGE with DAAM. For every image, {BUNDLE_FILES}",
    )
    explain.add_argument(
        "images", nargs="+", metavar="IMAGE",
        help="image files (any format Pillow reads) and folders (walked for images)",
    )  # fmt: skip
    add_model_options(explain, "the bundled demo ViT, trained on vitflow's synthetic scenes only")
    explain.add_argument(
        "--text",
        action="append",
        metavar="PROMPT",
        help="open_clip models: a text to compare the image with (repeat for several; the most similar is "
        "explained unless --target picks one by position)",
    )
    explain.add_argument(
        "--target",
        metavar="CLASS",
        help="class to explain for every image, by index or by the model's own name for it (tabby, "
        "'golden retriever': case and spaces do not matter; default: each image's predicted class)",
    )
    explain.add_argument(
        "--bank",
        metavar="FILE",
        help="memory bank (vitflow bank build) for a backbone without classifier: explain its weighted "
        "k-NN decision (method.md section 5); the model is built with num_classes=0",
    )
    explain.add_argument(
        "--k", type=positive_int, default=None,
        help="k-NN neighbours with --bank (default 20, or the bank's size when it holds fewer)",
    )
    explain.add_argument(
        "--temperature", type=float, default=0.07, help="k-NN vote temperature with --bank (default 0.07)"
    )
    explain.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    add_render_options(explain)
    explain.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.bank is not None and args.target is not None:
        say_error("--target and --bank exclude each other: with a bank the k-NN prediction is explained")
        return EXIT_USAGE
    if args.model is None:
        say_note("no --model given: using the bundled demo ViT (trained on vitflow's synthetic scenes only)")
    return explain_into(args, args.images)
