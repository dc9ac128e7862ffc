"""``vitflow`` command line: parses arguments, calls the library, reports. No method logic here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vitflow import __version__
from vitflow.render import MODES

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitflow",
        description="Dynamic Accumulated Attention Maps: how a Vision Transformer reaches its decision, "
        "block by block.",
    )
    parser.add_argument("--version", action="version", version=f"vitflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser(
        "explain",
        help="explain images with a timm ViT and write overlays, a GIF of the attention flow and a manifest",
        description=(
            "Explain each IMAGE with DAAM. For every image, OUT/<image name>/ receives input.png (the crop "
            "the model saw), block_NN.png (the accumulated map after block NN over the image), flow.gif "
            "(the attention flow, block number on each frame) and manifest.json (model, image, top-5 "
            "classes, target, per-block map statistics). Files are written atomically; manifest.json "
            "comes last."
        ),
    )
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    explain.add_argument("--model", required=True, help="timm model name, e.g. deit_small_patch16_224")
    explain.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="weights (.safetensors, or .pth/.pt read with weights_only=True); default: download pretrained",
    )
    explain.add_argument(
        "--target",
        type=int,
        metavar="N",
        help="class index to explain for every image (default: each image's predicted class)",
    )
    explain.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    explain.add_argument(
        "--batch-size", type=_positive_int, default=8, help="images per forward pass (default 8)"
    )
    explain.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    explain.add_argument(
        "--mode",
        choices=MODES,
        default="sigmoid",
        help="display normalisation (method.md section 6; default sigmoid)",
    )
    explain.add_argument("--alpha", type=float, default=0.4, help="heatmap weight in overlays (default 0.4)")
    explain.add_argument(
        "--image-weight", type=float, default=0.8, help="image weight in overlays (default 0.8)"
    )
    explain.add_argument("--cmap", default="jet", help="colormap name (default jet; others need matplotlib)")
    explain.add_argument(
        "--rho",
        choices=("relu", "identity"),
        default="relu",
        help="transform of the channel coefficients (default relu, as the published supervised code)",
    )
    explain.add_argument(
        "--normalize-blocks",
        action="store_true",
        help="min-max normalise each block's map before accumulating",
    )
    explain.add_argument(
        "--gif-duration", type=_positive_int, default=400, metavar="MS", help="ms per GIF frame"
    )
    explain.set_defaults(handler=_explain)
    return parser


def _error(message: str) -> None:
    print(f"vitflow: error: {message}", file=sys.stderr)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    return device


def _output_dirs(images: Sequence[str], out: Path) -> list[Path]:
    """One folder per image, named after the file; repeated names get a numeric suffix."""
    seen: dict[str, int] = {}
    dirs = []
    for image in images:
        stem = Path(image).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(out / (stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"))
    return dirs


def _explain(args: argparse.Namespace) -> int:
    import torch

    from vitflow.bundle import RenderOptions, write_bundle
    from vitflow.data import ImageLoadError, Preprocessing, load_image
    from vitflow.engine import DAAM
    from vitflow.loading import ModelLoadError, class_names, load_timm_model
    from vitflow.render import colormap_lut

    try:
        device = _device(args.device)
        colormap_lut(args.cmap)  # fail on a bad colormap before any work
        model = load_timm_model(args.model, args.checkpoint).to(device)
        daam = DAAM(model, rho=args.rho, normalize_blocks=args.normalize_blocks)
    except (ModelLoadError, ValueError, TypeError, NotImplementedError) as error:
        _error(str(error))
        return EXIT_USAGE

    preprocessing = Preprocessing.for_timm(model)
    names = class_names(model)
    options = RenderOptions(args.mode, args.alpha, args.image_weight, args.cmap, args.gif_duration)
    out = Path(args.out)
    jobs = list(zip(args.images, _output_dirs(args.images, out), strict=True))
    failures = 0
    with daam:
        for start in range(0, len(jobs), args.batch_size):
            loaded = []
            for path, folder in jobs[start : start + args.batch_size]:
                try:
                    loaded.append((path, folder, preprocessing(load_image(path))))
                except ImageLoadError as error:
                    _error(str(error))
                    failures += 1
            if not loaded:
                continue
            x = torch.stack([tensor for _, _, tensor in loaded]).to(device)
            try:
                result = daam(x, target=args.target)
            except ValueError as error:
                _error(str(error))
                return EXIT_USAGE
            for i, (path, folder, _) in enumerate(loaded):
                metadata = {
                    "model": args.model,
                    "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                    "image": str(path),
                    "input_size": list(x.shape[-2:]),
                    "preprocessing": preprocessing.config,
                    "rho": args.rho,
                    "normalize_blocks": args.normalize_blocks,
                }
                try:
                    manifest = write_bundle(
                        folder, preprocessing.to_image(x[i]), result[i], metadata, names, options
                    )
                except OSError as error:
                    _error(f"{path}: could not write {folder} ({error})")
                    failures += 1
                    continue
                target = manifest["target"]
                print(f"{path}: {target['name']} (p={target['probability']:.3f}) -> {folder}")
    if failures:
        _error(f"{failures} of {len(jobs)} images failed")
        return EXIT_SOME_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
