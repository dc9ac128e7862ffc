"""``vitflow scenes``: write synthetic scenes with exact object masks."""

from __future__ import annotations

import argparse

from vitflow.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    one_line,
    positive_int,
    say_error,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    scenes = commands.add_parser(
        "scenes",
        help="write procedural ground-truth scenes (ImageFolder layout, masks, boxes.json)",
        description="Write N procedural scenes: OUT/images/<class>/scene_NNNNNN.png (ImageFolder layout: "
        "give OUT/images to dataset readers such as vitflow bank build), OUT/masks/scene_NNNNNN_K.png (255 "
        "inside object K) and OUT/boxes.json (classes, labels, boxes, mask files). Each scene is determined "
        "by (seed, index).",
    )
    scenes.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    scenes.add_argument("--n", type=positive_int, required=True, help="number of scenes")
    scenes.add_argument("--seed", type=int, default=0, help="stream seed (default 0)")
    scenes.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    scenes.add_argument(
        "--objects",
        type=int,
        choices=(1, 2),
        default=1,
        help="objects per scene, of different classes (default 1)",
    )
    scenes.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vitflow.data.scenes import write_scenes

    try:
        manifest = write_scenes(args.out, args.n, seed=args.seed, size=args.size, objects=args.objects)
    except (OSError, ValueError) as error:
        say_error(one_line(error))
        return EXIT_USAGE
    print(f"wrote {len(manifest['scenes'])} scenes to {args.out} (classes: {', '.join(manifest['classes'])})")
    return EXIT_OK
