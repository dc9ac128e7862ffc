"""``vitflow demo``: explain held-out synthetic scenes with the bundled demo ViT (no download)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitflow.cli.common import (
    BUNDLE_FILES,
    EXIT_OK,
    EXIT_USAGE,
    add_render_options,
    explain_into,
    one_line,
    positive_int,
    say_error,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="explain a few synthetic scenes with the bundled demo ViT (no download needed)",
        description=f"Render a few ground-truth scenes into OUT/scenes/ and explain them with the bundled "
        f"demo ViT. For every scene, {BUNDLE_FILES}",
    )
    demo.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    demo.add_argument("--n", type=positive_int, default=4, help="number of scenes (default 4)")
    demo.add_argument("--seed", type=int, default=7, help="scene stream seed (default 7)")
    demo.add_argument(
        "--knn",
        action="store_true",
        help="explain the demo backbone's weighted k-NN decision over the bundled memory bank "
        "(the self-supervised mode, method.md section 5) instead of its classifier",
    )
    add_render_options(demo)
    demo.set_defaults(handler=run, target=None, bank=None, text=None, img_size=None)


def run(args: argparse.Namespace) -> int:
    from vitflow.data.scenes import write_scenes

    args.model = args.checkpoint = None
    args.k, args.temperature = None, 0.07
    if args.knn:
        from vitflow.models.demo import bank_path

        args.bank = str(bank_path())
    scene_dir = Path(args.out) / "scenes"
    try:
        manifest = write_scenes(scene_dir, args.n, seed=args.seed)
    except (OSError, ValueError) as error:
        say_error(f"cannot write scenes to {scene_dir} ({one_line(error)})")
        return EXIT_USAGE
    images = [str(scene_dir / entry["image"]) for entry in manifest["scenes"]]
    print(f"wrote {len(images)} scenes (seed {args.seed}) to {scene_dir}")
    code = explain_into(args, images)
    if code == EXIT_OK:
        bundle = "final.jpg, viewer.html, manifest.json"
        print(f"explanations in {args.out}/scene_*/ ({bundle}); maps in {args.out}/maps/")
    return code
