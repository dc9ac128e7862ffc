"""``vitflow`` command line: parses arguments, calls the library, reports. No method logic here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vitflow.version import __version__
from vitflow.evaluation import METHODS, METRICS, PER_BLOCK_METRICS
from vitflow.render import MODES

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_render_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that writes explanations."""
    parser.add_argument(
        "--batch-size", type=_positive_int, default=8, help="images per forward pass (default 8)"
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="sigmoid",
        help="display normalisation (method.md section 6; default sigmoid)",
    )
    parser.add_argument("--alpha", type=float, default=0.4, help="heatmap weight in overlays (default 0.4)")
    parser.add_argument(
        "--image-weight", type=float, default=0.8, help="image weight in overlays (default 0.8)"
    )
    parser.add_argument("--cmap", default="jet", help="colormap name (default jet; others need matplotlib)")
    parser.add_argument(
        "--rho",
        choices=("relu", "identity"),
        help="transform of the channel coefficients (default: relu for classes, identity with --bank, "
        "as the published supervised and self-supervised code)",
    )
    parser.add_argument(
        "--normalize-blocks",
        action="store_true",
        help="min-max normalise each block's map before accumulating",
    )
    parser.add_argument(
        "--gif-duration",
        type=_positive_int,
        default=400,
        metavar="MS",
        help="ms per GIF/MP4 frame (default 400)",
    )
    parser.add_argument(
        "--gif-loop", type=int, default=0, metavar="N", help="GIF repeats, 0 = forever (default 0)"
    )
    parser.add_argument(
        "--mp4", action="store_true", help="also write flow.mp4 (H.264, through imageio-ffmpeg)"
    )
    parser.add_argument(
        "--figure",
        action="store_true",
        help="also write figure.png/.pdf/.svg: input, accumulated and per-block maps",
    )
    parser.add_argument(
        "--figure-blocks",
        metavar="B,B,...",
        help="blocks to show in the figure, 1-based, e.g. 1,4,8,12 (default all)",
    )
    parser.add_argument(
        "--html",
        action="store_true",
        help="also write viewer.html per image (self-contained) and OUT/index.html",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


_BUNDLE_FILES = (
    "OUT/<image name>/ receives input.png (the crop the model saw), block_NN.png (the accumulated map "
    "after block NN over the image), flow.gif (the attention flow, block number on each frame) and "
    "manifest.json (model, image, top-5 classes, target, per-block map statistics); with --mp4, --figure "
    "and --html also flow.mp4, figure.png/.pdf/.svg and viewer.html (plus OUT/index.html). Files are "
    "written atomically; manifest.json comes last."
)


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
        help="explain images with a ViT and write overlays, a GIF of the attention flow and a manifest",
        description=f"Explain each IMAGE with DAAM. For every image, {_BUNDLE_FILES}",
    )
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    explain.add_argument(
        "--model",
        help="timm:NAME (or plain NAME), hf:NAME_OR_PATH, torchvision:NAME or open_clip:NAME[/PRETRAINED], "
        "e.g. deit_small_patch16_224, hf:google/vit-base-patch16-224, torchvision:vit_b_16, "
        "open_clip:ViT-B-32/openai (default: the bundled demo ViT, trained on vitflow's synthetic scenes "
        "only)",
    )
    explain.add_argument(
        "--text",
        action="append",
        metavar="PROMPT",
        help="open_clip models: a text to compare the image with (repeat for several; the most similar is "
        "explained unless --target picks one by position)",
    )
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
    explain.add_argument(
        "--bank",
        metavar="FILE",
        help="memory bank (vitflow bank build) for a backbone without classifier: explain its weighted "
        "k-NN decision (method.md section 5); the model is built with num_classes=0",
    )
    explain.add_argument(
        "--k", type=_positive_int, default=20, help="k-NN neighbours with --bank (default 20)"
    )
    explain.add_argument(
        "--temperature", type=float, default=0.07, help="k-NN vote temperature with --bank (default 0.07)"
    )
    explain.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    _add_render_options(explain)
    explain.set_defaults(handler=_explain)

    demo = commands.add_parser(
        "demo",
        help="explain a few synthetic scenes with the bundled demo ViT (no download needed)",
        description=f"Render a few ground-truth scenes into OUT/scenes/ and explain them with the bundled "
        f"demo ViT. For every scene, {_BUNDLE_FILES}",
    )
    demo.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    demo.add_argument("--n", type=_positive_int, default=4, help="number of scenes (default 4)")
    demo.add_argument("--seed", type=int, default=7, help="scene stream seed (default 7)")
    demo.add_argument(
        "--knn",
        action="store_true",
        help="explain the demo backbone's weighted k-NN decision over the bundled memory bank "
        "(the self-supervised mode, method.md section 5) instead of its classifier",
    )
    _add_render_options(demo)
    demo.set_defaults(handler=_demo, target=None, bank=None)

    scenes = commands.add_parser(
        "scenes",
        help="write procedural ground-truth scenes (ImageFolder layout, masks, boxes.json)",
        description="Write N procedural scenes: OUT/images/<class>/scene_NNNNNN.png (ImageFolder layout: "
        "give OUT/images to dataset readers such as vitflow bank build), OUT/masks/scene_NNNNNN_K.png (255 "
        "inside object K) and OUT/boxes.json (classes, labels, boxes, mask files). Each scene is determined "
        "by (seed, index).",
    )
    scenes.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    scenes.add_argument("--n", type=_positive_int, required=True, help="number of scenes")
    scenes.add_argument("--seed", type=int, default=0, help="stream seed (default 0)")
    scenes.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    scenes.add_argument(
        "--objects",
        type=int,
        choices=(1, 2),
        default=1,
        help="objects per scene, of different classes (default 1)",
    )
    scenes.set_defaults(handler=_scenes)

    evaluate = commands.add_parser(
        "evaluate",
        help="score DAAM and baseline methods with localisation and faithfulness metrics",
        description="Run every METHOD and METRIC over a dataset: a scenes folder written by vitflow scenes "
        "(object masks from boxes.json; two-object scenes explain each object) or an ImageFolder tree "
        "(mask-free metrics only). Writes OUT/records.jsonl (per image; a rerun resumes), results.json, "
        "results.csv, results.md and per_block.png (DAAM's metrics after each block).",
    )
    evaluate.add_argument("--model", help="as for explain (default: the bundled demo ViT)")
    evaluate.add_argument("--checkpoint", metavar="FILE", help="weights for --model")
    evaluate.add_argument("--data", required=True, help="scenes folder (with boxes.json) or ImageFolder tree")
    evaluate.add_argument(
        "--boxes", metavar="DIR", help="ILSVRC box annotations (DIR/<image stem>.xml) as masks"
    )
    evaluate.add_argument("--out", required=True, metavar="DIR", help="output folder")
    evaluate.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated (default: all); also daam_from_K: DAAM accumulated from block K on",
    )
    evaluate.add_argument("--metrics", default=",".join(METRICS), help="comma-separated (default: all)")
    evaluate.add_argument(
        "--per-block-metrics",
        default=",".join(PER_BLOCK_METRICS),
        help="metrics also computed for DAAM's map after every block (default: the mask metrics, "
        "perturbation_pos, insertion; empty for none)",
    )
    evaluate.add_argument(
        "--first-object-only", action="store_true", help="explain only the first object of a scene"
    )
    evaluate.add_argument("--limit", type=_positive_int, help="evaluate only the first N items")
    evaluate.add_argument(
        "--batch-size", type=_positive_int, default=32, help="images per batch (default 32)"
    )
    evaluate.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    evaluate.add_argument(
        "--sanity", type=_positive_int, default=0, metavar="N",
        help="also run the cascading-randomisation sanity check (Adebayo et al.) for every method on "
        "the first N items: OUT/sanity.json, OUT/sanity.md",
    )  # fmt: skip
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=_evaluate)

    bank = commands.add_parser("bank", help="build or inspect memory banks for self-supervised ViTs")
    bank_commands = bank.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    build = bank_commands.add_parser(
        "build",
        help="compute a labelled memory bank of L2-normalised features",
        description="Compute the L2-normalised features of labelled images with a backbone (num_classes=0) "
        "and store them with their labels as a memory bank (safetensors + JSON metadata). Interrupted "
        "builds resume from OUT.parts/ without recomputing finished chunks.",
    )
    build.add_argument(
        "--model",
        help="timm:NAME, hf:..., torchvision:..., open_clip:... (default: the bundled demo ViT's backbone)",
    )
    build.add_argument(
        "--checkpoint", metavar="FILE", help="weights for --model (default: download pretrained)"
    )
    build.add_argument(
        "--data",
        required=True,
        help="folder with one sub-folder of images per class, or a list file of 'IMAGE_PATH CLASS' lines",
    )
    build.add_argument("--out", required=True, metavar="FILE", help="bank file to write")
    build.add_argument(
        "--batch-size", type=_positive_int, default=64, help="images per forward pass (default 64)"
    )
    build.add_argument(
        "--chunk", type=_positive_int, default=4096, help="images per resumable chunk (default 4096)"
    )
    build.add_argument("--half", action="store_true", help="store features in float16")
    build.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(handler=_bank_build)
    info = bank_commands.add_parser("info", help="print a memory bank's size, classes and metadata")
    info.add_argument("bank", metavar="FILE")
    info.set_defaults(handler=_bank_info)
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


def _load(args: argparse.Namespace, headless: bool = False):
    """The model the arguments name (the demo ViT without --model); ``headless`` drops its classifier."""
    from vitflow.models import LoadedModel, load_model

    if args.model is None:
        from vitflow.data.scenes import CLASS_NAMES
        from vitflow.demo import NAME, load_demo_model

        model, preprocessing = load_demo_model()
        if headless:
            model.reset_classifier(0)
        return LoadedModel(model, preprocessing, list(CLASS_NAMES), NAME)
    return load_model(args.model, args.checkpoint, headless=headless, texts=getattr(args, "text", None))


def _explain_files(args: argparse.Namespace, images: Sequence[str]) -> int:
    """Explain image files into ``args.out``; report each failure on one line and carry on."""
    import torch

    from vitflow.bundle import RenderOptions, write_bundle
    from vitflow.data import ImageLoadError, load_image
    from vitflow.engine import DAAM
    from vitflow.loading import ModelLoadError
    from vitflow.progress import Progress
    from vitflow.render import colormap_lut

    try:
        device = _device(args.device)
        colormap_lut(args.cmap)  # fail on a bad colormap before any work
        loaded = _load(args, headless=args.bank is not None)
        model = loaded.model.to(device)
        target = args.target
        if loaded.target is not None:  # open_clip with --text: --target picks a text by position
            target = loaded.target
            target.index = args.target
        if args.bank is not None:
            from vitflow.targets import KNNTarget, MemoryBank

            bank = MemoryBank.load(args.bank)
            bank.check_model(model)
            target = KNNTarget(bank, k=args.k, temperature=args.temperature)
            loaded.names = bank.class_names
        daam = DAAM(model, rho=args.rho, normalize_blocks=args.normalize_blocks)
    except (ModelLoadError, ValueError, TypeError, NotImplementedError) as error:
        _error(str(error))
        return EXIT_USAGE

    preprocessing = loaded.preprocessing
    try:
        figure_blocks = tuple(int(b) for b in args.figure_blocks.split(",")) if args.figure_blocks else None
    except ValueError:
        _error(
            f"--figure-blocks takes comma-separated block numbers such as 1,4,8, got {args.figure_blocks!r}"
        )
        return EXIT_USAGE
    options = RenderOptions(
        mode=args.mode, alpha=args.alpha, image_weight=args.image_weight, cmap=args.cmap,
        gif_duration_ms=args.gif_duration, gif_loop=args.gif_loop, mp4=args.mp4, figure=args.figure,
        figure_blocks=figure_blocks, html=args.html,
    )  # fmt: skip
    jobs = list(zip(images, _output_dirs(images, Path(args.out)), strict=True))
    failures, written = 0, []
    progress = Progress(len(jobs), "explain", enabled=len(jobs) > 1 and not args.quiet)
    with daam:
        for start in range(0, len(jobs), args.batch_size):
            batch = []
            for path, folder in jobs[start : start + args.batch_size]:
                try:
                    batch.append((path, folder, preprocessing(load_image(path))))
                except ImageLoadError as error:
                    _error(str(error))
                    failures += 1
            progress.update(len(jobs[start : start + args.batch_size]) - len(batch))
            if not batch:
                continue
            x = torch.stack([tensor for _, _, tensor in batch]).to(device)
            try:
                result = daam(x, target=target)
            except ValueError as error:
                _error(str(error))
                return EXIT_USAGE
            for i, (path, folder, _) in enumerate(batch):
                metadata = {
                    "model": loaded.label,
                    "checkpoint": str(args.checkpoint) if getattr(args, "checkpoint", None) else None,
                    "image": str(path),
                    "input_size": list(x.shape[-2:]),
                    "preprocessing": preprocessing.config,
                    "rho": args.rho or ("identity" if args.bank else "relu"),
                    "bank": str(args.bank) if args.bank else None,
                    "normalize_blocks": args.normalize_blocks,
                }
                try:
                    manifest = write_bundle(
                        folder, preprocessing.to_image(x[i]), result[i], metadata, loaded.names, options
                    )
                except (OSError, ValueError) as error:
                    _error(f"{path}: could not write {folder} ({error})")
                    failures += 1
                    continue
                finally:
                    progress.update(1)
                target = manifest["target"]
                written.append((folder, target["name"]))
                print(f"{path}: {target['name']} (p={target['probability']:.3f}) -> {folder}")
    progress.close()
    if args.html and written:
        from vitflow.files import write_bytes_atomic
        from vitflow.render import index_html

        entries = [
            {
                "name": f.name,
                "viewer": f"{f.name}/viewer.html",
                "thumbnail": f"{f.name}/input.png",
                "target": t,
            }
            for f, t in written
        ]
        write_bytes_atomic(
            Path(args.out) / "index.html", index_html(entries, f"vitflow: {loaded.label}").encode()
        )
    if failures:
        _error(f"{failures} of {len(jobs)} images failed")
        return EXIT_SOME_FAILED
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    if args.bank is not None and args.target is not None:
        _error("--target and --bank exclude each other: with a bank the k-NN prediction is explained")
        return EXIT_USAGE
    if args.model is None:
        if args.checkpoint:
            _error("--checkpoint needs --model (the architecture the weights belong to)")
            return EXIT_USAGE
        print("no --model given: using the bundled demo ViT (trained on vitflow's synthetic scenes only)",
              file=sys.stderr)  # fmt: skip
    return _explain_files(args, args.images)


def _demo(args: argparse.Namespace) -> int:
    from vitflow.data.scenes import write_scenes

    args.model = args.checkpoint = None
    args.k, args.temperature = 20, 0.07
    if args.knn:
        from vitflow.demo import bank_path

        args.bank = str(bank_path())
    scene_dir = Path(args.out) / "scenes"
    try:
        manifest = write_scenes(scene_dir, args.n, seed=args.seed)
    except OSError as error:
        _error(f"cannot write scenes to {scene_dir} ({error})")
        return EXIT_USAGE
    images = [str(scene_dir / entry["image"]) for entry in manifest["scenes"]]
    print(f"wrote {len(images)} scenes (seed {args.seed}) to {scene_dir}")
    code = _explain_files(args, images)
    if code == EXIT_OK:
        print(f"explanations in {args.out}/scene_*/ (overlays, flow.gif, manifest.json)")
    return code


def _scenes(args: argparse.Namespace) -> int:
    from vitflow.data.scenes import write_scenes

    try:
        manifest = write_scenes(args.out, args.n, seed=args.seed, size=args.size, objects=args.objects)
    except ValueError as error:
        _error(str(error))
        return EXIT_USAGE
    print(f"wrote {len(manifest['scenes'])} scenes to {args.out} (classes: {', '.join(manifest['classes'])})")
    return EXIT_OK


def _bank_build(args: argparse.Namespace) -> int:
    from vitflow.data.folders import list_labelled_images
    from vitflow.loading import ModelLoadError
    from vitflow.targets.bank import model_identity
    from vitflow.targets.bank_build import build_bank

    try:
        device = _device(args.device)
        images = list_labelled_images(args.data)
        loaded = _load(args, headless=True)
    except (ModelLoadError, ValueError) as error:
        _error(str(error))
        return EXIT_USAGE
    failures = []

    def report(message: str) -> None:
        failures.append(message)
        _error(message)

    model = loaded.model.to(device)
    name = model_identity(model)  # what bank.check_model compares against when the bank is used
    try:
        bank = build_bank(
            model, loaded.preprocessing, images, args.out, preprocessing_config=loaded.preprocessing.config,
            model_name=name, batch_size=args.batch_size, chunk_images=args.chunk, half=args.half,
            device=device, progress=not args.quiet, on_error=report,
        )  # fmt: skip
    except ValueError as error:
        _error(str(error))
        return EXIT_USAGE
    print(f"wrote {args.out}: {len(bank)} features of dimension {bank.dim}, {bank.num_classes} classes, "
          f"model {name}")  # fmt: skip
    if failures:
        _error(f"{len(failures)} of {len(images)} images could not be read and were left out")
        return EXIT_SOME_FAILED
    return EXIT_OK


def _bank_info(args: argparse.Namespace) -> int:
    import json

    from vitflow.targets import BankError, MemoryBank

    try:
        bank = MemoryBank.load(args.bank)
    except BankError as error:
        _error(str(error))
        return EXIT_USAGE
    print(f"{args.bank}: {len(bank)} x {bank.dim} {str(bank.features.dtype).removeprefix('torch.')}, "
          f"{bank.num_classes} classes")  # fmt: skip
    print(json.dumps(bank.metadata, indent=2))
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from vitflow.evaluation import evaluate, read_items, sanity_check
    from vitflow.loading import ModelLoadError
    from vitflow.progress import Progress

    try:
        device = _device(args.device)
        loaded = _load(args)
        items = read_items(args.data, "first" if args.first_object_only else "all", args.boxes)[: args.limit]
        progress = Progress(len(items), "evaluate", enabled=not args.quiet)
        summary = evaluate(
            loaded.model, loaded.preprocessing, items, args.out, methods=args.methods.split(","),
            metrics=args.metrics.split(","), batch_size=args.batch_size, device=device, progress=progress,
            per_block_metrics=[m for m in args.per_block_metrics.split(",") if m],
        )  # fmt: skip
        progress.close()
        if args.sanity:
            sanity_check(
                loaded.model, loaded.preprocessing, items[: args.sanity], args.out,
                methods=args.methods.split(","), batch_size=args.batch_size, device=device,
            )  # fmt: skip
    except (ModelLoadError, ValueError, TypeError, NotImplementedError) as error:
        _error(str(error))
        return EXIT_USAGE
    print(
        f"evaluated {summary['items']} items (model accuracy {summary['accuracy']:.3f}) -> "
        f"{args.out}/results.md"
    )
    print((Path(args.out) / "results.md").read_text(), end="")
    if args.sanity:
        print(
            f"sanity check on {min(args.sanity, len(items))} items: rank correlation with the trained "
            "model's maps after re-initialising the top k blocks (lower: the map depends on the weights)"
        )
        print((Path(args.out) / "sanity.md").read_text(), end="")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
