"""``vitflow`` command line: parses arguments, calls the library, reports. No method logic here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vitflow.data.images import MAX_PIXELS
from vitflow.evaluation import check_flow_methods, default_per_block_metrics, method_names, metric_names
from vitflow.models import model_prefixes
from vitflow.render import MODES
from vitflow.version import __version__

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_RANK_FAILED = 0, 1, 2, 3
# "[rank N] " on ranks other than 0 of a torchrun run (torchrun sets RANK): whose line it is
_RANK = f"[rank {os.environ['RANK']}] " if os.environ.get("RANK", "0") != "0" else ""


def _workers(text: str) -> int:
    return _whole_number(text, 0, "must be 0 (decode in the main process) or more")


def _add_scale_options(parser: argparse.ArgumentParser, chunk: int) -> None:
    """Options of the commands that run over datasets (and under torchrun)."""
    from vitflow.data.loader import default_workers

    parser.add_argument(
        "--workers", type=_workers, default=default_workers(), metavar="N",
        help="DataLoader processes decoding images per rank (0: in the main process; default "
        f"{default_workers()} here: the cores a rank has, less one, at most 8)",
    )  # fmt: skip
    parser.add_argument(
        "--chunk", type=_positive_int, default=chunk, metavar="N",
        help=f"images per resumable chunk, rounded up to whole batches (default {chunk}): the unit a rank "
        "takes under torchrun and a rerun skips once finished",
    )  # fmt: skip


def _positive_int(text: str) -> int:
    return _whole_number(text, 1, "must be at least 1")


def _whole_number(text: str, minimum: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{rule}, got {value}")
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
        "--on", choices=("original", "crop"), default="original",
        help="draw the maps on the original image at its own proportions (default: the model's crop "
        "placed where it came from, the rest dimmed) or on the crop the model saw",
    )  # fmt: skip
    parser.add_argument(
        "--display-size", type=_positive_int, metavar="PX",
        help="long side of overlays, GIF/MP4 frames, figures and the viewer (default: the image's own, "
        "kept between 512 and 1024)",
    )  # fmt: skip
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
    parser.add_argument(
        "--max-pixels", type=_positive_int, default=MAX_PIXELS, metavar="N",
        help=f"refuse images with more pixels (a guard against decompression bombs; default {MAX_PIXELS:,})",
    )  # fmt: skip
    parser.add_argument(
        "--save-maps", nargs="?", const="float32", choices=("float32", "float16"), metavar="DTYPE",
        help="also write the raw per-block maps, logits and targets to OUT/maps/chunk_NNNNNN.safetensors "
        "(float32, or float16 for half the size); read them with vitflow.load_maps(OUT)",
    )  # fmt: skip
    parser.add_argument(
        "--no-images", action="store_true", help="skip the pictures (with --save-maps: maps only)"
    )
    from vitflow.data.loader import default_writers

    parser.add_argument(
        "--writers", type=_workers, default=default_writers(), metavar="N",
        help=f"threads encoding the pictures while the model runs (default {default_writers()} here: half "
        "the cores a rank has, 2 to 8; 0: in the main thread)",
    )  # fmt: skip
    _add_scale_options(parser, chunk=512)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_model_options(parser: argparse.ArgumentParser, default: str) -> None:
    prefixes = ", ".join(f"{p}:" for p in model_prefixes())
    parser.add_argument(
        "--model",
        help=f"a model: plain NAME (timm) or one of the prefixes {prefixes}, e.g. deit_small_patch16_224, "
        "hf:google/vit-base-patch16-224, torchvision:vit_b_16, open_clip:ViT-B-32/openai "
        f"(default: {default})",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="weights (.safetensors, or .pth/.pt read with weights_only=True); default: download pretrained",
    )
    parser.add_argument(
        "--img-size", type=_positive_int, metavar="PX",
        help="input size of a timm or torchvision model (default: read from the checkpoint's position "
        "embedding, else the architecture's)",
    )  # fmt: skip


_BUNDLE_FILES = (
    "OUT/<image name>/ receives input.png (the crop the model saw), block_NN.png (the accumulated map "
    "after block NN, drawn on the original image where the crop came from, the rest dimmed; --on crop "
    "draws on the crop), final.png (the last, labelled), flow.gif (the attention flow, block number on "
    "each frame) and "
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
    explain.add_argument(
        "images", nargs="+", metavar="IMAGE",
        help="image files (any format Pillow reads) and folders (walked for images)",
    )  # fmt: skip
    _add_model_options(explain, "the bundled demo ViT, trained on vitflow's synthetic scenes only")
    explain.add_argument(
        "--text",
        action="append",
        metavar="PROMPT",
        help="open_clip models: a text to compare the image with (repeat for several; the most similar is "
        "explained unless --target picks one by position)",
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
    demo.set_defaults(handler=_demo, target=None, bank=None, text=None, img_size=None)

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
        "results.csv, results.md and per_block.png (the per-block metrics after each block, for "
        "--per-block-methods).",
    )
    _add_model_options(evaluate, "the bundled demo ViT")
    evaluate.add_argument(
        "--text", action="append", metavar="PROMPT",
        help="open_clip models: one text per class, in class order (default: 'a photo of a CLASS')",
    )  # fmt: skip
    evaluate.add_argument(
        "--data", required=True,
        help="scenes folder (with boxes.json) or ImageFolder tree; with --protocol chefer also "
        "ImageNet-segmentation's gtsegs_ijcv.mat",
    )  # fmt: skip
    evaluate.add_argument(
        "--protocol", choices=("vitflow", "chefer"), default="vitflow",
        help="vitflow (default: every metric per image, the model's own preprocessing) or chefer: "
        "Chefer et al. (CVPR 2021) exactly as their code computes it (resize without crop; pixel "
        "accuracy, IoU summed over the dataset, AP over foreground and background on a .mat file; "
        "positive/negative perturbation AUC against the true label on an ImageFolder tree); "
        "README, 'Public protocols'",
    )  # fmt: skip
    evaluate.add_argument(
        "--boxes", metavar="DIR", help="ILSVRC box annotations (DIR/<image stem>.xml) as masks"
    )
    evaluate.add_argument("--out", required=True, metavar="DIR", help="output folder")
    evaluate.add_argument(
        "--maps", metavar="RUN",
        help="also score the maps saved by vitflow explain --save-maps into RUN (method 'saved', no model "
        "run for them; every image of the dataset must be among them)",
    )  # fmt: skip
    evaluate.add_argument(
        "--methods",
        default=",".join(method_names()),
        help=f"comma-separated, from {', '.join(method_names())} and daam_from_K (DAAM accumulated from "
        "block K on) (default: all)",
    )
    evaluate.add_argument(
        "--metrics", default=",".join(metric_names()),
        help=f"comma-separated, from {', '.join(metric_names())} (default: all)",
    )  # fmt: skip
    evaluate.add_argument(
        "--per-block-metrics",
        default=",".join(default_per_block_metrics()),
        help="metrics also computed for the map after every block (default: the mask metrics, "
        "perturbation_pos, insertion; empty for none)",
    )
    evaluate.add_argument(
        "--per-block-methods",
        help="comma-separated methods whose map after every block the per-block metrics score: DAAM and "
        "its variants that accumulate (daam, daam_block_norm, daam_from_K, daam_rollout, daam_generic, "
        "daam_concentration); each must be among --methods (default: daam, when it is)",
    )
    evaluate.add_argument(
        "--first-object-only", action="store_true", help="explain only the first object of a scene"
    )
    evaluate.add_argument("--limit", type=_positive_int, help="evaluate only the first N items")
    evaluate.add_argument(
        "--batch-size", type=_positive_int, default=32, help="images per batch (default 32)"
    )
    evaluate.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    _add_scale_options(evaluate, chunk=256)
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
    _add_model_options(build, "the bundled demo ViT's backbone")
    build.add_argument(
        "--data",
        required=True,
        help="folder with one sub-folder of images per class, or a list file of 'IMAGE_PATH CLASS' lines",
    )
    build.add_argument("--out", required=True, metavar="FILE", help="bank file to write")
    build.add_argument(
        "--batch-size", type=_positive_int, default=64, help="images per forward pass (default 64)"
    )
    _add_scale_options(build, chunk=4096)
    build.add_argument("--half", action="store_true", help="store features in float16")
    build.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(handler=_bank_build, text=None)
    imp = bank_commands.add_parser(
        "import",
        help="make a memory bank from a feature dump (DINO's eval_knn.py --dump_features, DINOv2, ...)",
        description="A bank from features (N, D) and labels (N,) another tool saved: a DINO dump folder "
        "(trainfeat.pth, trainlabels.pth, ...) or --features/--labels files (weights-only torch.save, "
        ".npy or .safetensors; never unpickled). Features are L2-normalised if they are not; class names "
        "come from --classes, else ImageNet-1k's for 1,000 classes, else class_0...",
    )
    imp.add_argument("dump", nargs="?", metavar="DUMP_DIR", help="folder holding DINO's dump files")
    imp.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="which of the dump's splits becomes the bank (default train, as DINO's k-NN)",
    )
    imp.add_argument("--features", metavar="FILE", help="features file (instead of DUMP_DIR)")
    imp.add_argument("--labels", metavar="FILE", help="labels file (instead of DUMP_DIR)")
    imp.add_argument("--classes", metavar="FILE", help="class names, one per line or a JSON list")
    imp.add_argument(
        "--model",
        metavar="NAME",
        help="the model the features came from (recorded; explain --bank then refuses others), "
        "e.g. vit_small_patch16_224.dino",
    )
    imp.add_argument("--out", required=True, metavar="FILE", help="the .bank file to write")
    imp.add_argument("--half", action="store_true", help="store features in float16")
    imp.set_defaults(handler=_bank_import)
    info = bank_commands.add_parser("info", help="print a memory bank's size, classes and metadata")
    info.add_argument("bank", metavar="FILE")
    info.set_defaults(handler=_bank_info)

    app = commands.add_parser(
        "app",
        help="a local web app: upload an image, pick the class, move through the blocks (needs vitflow[app])",
        description="Starts a Gradio app on HOST:PORT (default 127.0.0.1:7860, this machine only). The model "
        "is loaded once and shared; requests are queued, so the model never runs twice at once.",
    )
    _add_model_options(app, "the bundled demo ViT")
    app.add_argument("--text", action="append", metavar="PROMPT", help="open_clip models: one text per class")
    app.add_argument("--bank", metavar="FILE", help="memory bank for a backbone without classifier")
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    app.add_argument("--port", type=_positive_int, default=7860, help="port (default 7860)")
    app.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    app.add_argument("--display-size", type=_positive_int, metavar="PX", help="long side of the pictures")
    app.set_defaults(handler=_app)

    models = commands.add_parser(
        "models",
        help="which architectures DAAM explains (timm, transformers, torchvision, open_clip)",
        description="Without PATTERN: the supported-model table (one row per architecture class, each "
        "tested). With PATTERN (shell-style, e.g. 'beit*' or 'vit_small_*'): every matching timm, "
        "torchvision and open_clip name with its class and verdict; timm names are built on the meta "
        "device (no download, about 0.1 s each).",
    )
    models.add_argument("pattern", nargs="?", metavar="PATTERN")
    models.set_defaults(handler=_models)
    return parser


def _app(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from vitflow.app import Session, build_app

        _, device = _device(args.device)
        loaded = _load(args, headless=args.bank is not None)
        bank = None
        if args.bank:
            from vitflow.targets import MemoryBank

            bank = MemoryBank.load(args.bank)
            bank.check_model(loaded.model)
        session = Session(loaded, bank, device, args.display_size)
        examples = _app_examples() if args.model is None else None
        app = build_app(session, examples)
    except ImportError as error:
        _error(_one_line(error))
        return EXIT_USAGE
    except _usage_errors() as error:
        _error(_one_line(error))
        return EXIT_USAGE
    print(f"vitflow app: {loaded.label} on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    app.launch(server_name=args.host, server_port=args.port, quiet=True, footer_links=[])
    return EXIT_OK


def _app_examples() -> list[str]:
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


def _models(args: argparse.Namespace) -> int:
    from vitflow import zoo

    if not args.pattern:
        print(zoo.markdown(), end="")
        return EXIT_OK
    names = zoo.timm_names(args.pattern)
    others = list(zoo.other_names(args.pattern))
    if not names and not others:
        _error(f"no architecture matches {args.pattern!r}; run `vitflow models` for the table")
        return EXIT_USAGE
    width = max(len(name) for name in [*names, *(o[1] for o in others)])
    counts = {"yes": 0, "all": 0}

    def show(family: str, name: str, cls: str, status: str) -> None:
        counts["all"] += 1
        counts["yes"] += status.startswith("yes")
        print(f"{family:<12} {name:<{width}}  {cls:<26} {status}", flush=True)

    for name, cls, status in zoo.timm_verdicts(names):  # printed as they are built
        show("timm", name, cls, status)
    for family, name, cls, reason in others:
        show(family, name, cls, "yes" if reason is None else f"no: {reason}")
    print(f"{counts['yes']} of {counts['all']} supported")
    return EXIT_OK


def _error(message: str) -> None:
    print(f"{_RANK}vitflow: error: {message}", file=sys.stderr)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (model, checkpoint, bank, target, options, files): one line, exit 2."""
    from vitflow.capture import DecompositionError
    from vitflow.loading import ModelLoadError

    return (ModelLoadError, DecompositionError, ValueError, TypeError, NotImplementedError, OSError)


def _device(name: str):
    """The device ``--device`` names and this process's place in a torchrun run (rank ``N``
    gets ``cuda:LOCAL_RANK``; outside torchrun, rank 0 of 1)."""
    import torch

    from vitflow import distributed

    global _RANK
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    group, device = distributed.init(device)
    _RANK = f"[rank {group.rank}] " if group.rank else ""
    return group, device


def _load(args: argparse.Namespace, headless: bool = False, texts=None):
    """The model the arguments name (the demo ViT without --model); ``headless`` drops its classifier."""
    from vitflow.models import LoadedModel, load_model

    if args.model is None:
        from vitflow.data.scenes import CLASS_NAMES
        from vitflow.demo import NAME, load_demo_model

        for option in ("checkpoint", "img_size", "text"):
            if getattr(args, option, None):
                raise ValueError(f"--{option.replace('_', '-')} needs --model (the architecture it is for)")
        model, preprocessing = load_demo_model()
        if headless:
            model.reset_classifier(0)
        return LoadedModel(model, preprocessing, list(CLASS_NAMES), NAME)
    return load_model(
        args.model, args.checkpoint, headless=headless, texts=texts or getattr(args, "text", None),
        img_size=getattr(args, "img_size", None),
    )  # fmt: skip


def _check_render_options(args: argparse.Namespace) -> tuple[int, ...] | None:
    """Fail on bad or unavailable render options before any work; returns the figure blocks."""
    from importlib import import_module

    from vitflow.render import colormap_lut

    colormap_lut(args.cmap)
    extras = (("figure", "matplotlib", "matplotlib"), ("mp4", "imageio_ffmpeg", "imageio-ffmpeg"))
    for wanted, module, package in extras:
        if getattr(args, wanted):
            try:
                import_module(module)
            except ImportError:
                raise ValueError(f"--{wanted} needs {package}: pip install 'vitflow[cli]'") from None
    if not args.figure_blocks:
        return None
    try:
        return tuple(int(b) for b in args.figure_blocks.split(","))
    except ValueError:
        raise ValueError(
            f"--figure-blocks takes comma-separated block numbers such as 1,4,8, got {args.figure_blocks!r}"
        ) from None


def _explain_files(args: argparse.Namespace, images: Sequence[str]) -> int:
    """Explain image files and folders into ``args.out``; report each failure on one line and carry on."""
    from vitflow.bundle import RenderOptions
    from vitflow.distributed import RankFailure
    from vitflow.pipeline import explain_files

    try:
        if args.no_images and not args.save_maps:
            raise ValueError("--no-images leaves nothing to write: add --save-maps (maps only) or drop it")
        group, device = _device(args.device)
        figure_blocks = _check_render_options(args)
        loaded = _load(args, headless=args.bank is not None)
        target, names = args.target, loaded.names
        if args.bank is not None:
            from vitflow.targets import KNNTarget, MemoryBank

            bank = MemoryBank.load(args.bank)
            bank.check_model(loaded.model)
            target = KNNTarget(bank, k=args.k, temperature=args.temperature)
            names = bank.class_names
        options = RenderOptions(
            mode=args.mode, alpha=args.alpha, image_weight=args.image_weight, cmap=args.cmap,
            gif_duration_ms=args.gif_duration, gif_loop=args.gif_loop, mp4=args.mp4, figure=args.figure,
            figure_blocks=figure_blocks, html=args.html, on=args.on, display_size=args.display_size,
        )  # fmt: skip
        metadata = {
            "model": loaded.label,
            "checkpoint": str(args.checkpoint) if getattr(args, "checkpoint", None) else None,
            "bank": str(args.bank) if args.bank else None,
        }
        report = explain_files(
            loaded.model, loaded.preprocessing, images, args.out, target=target, names=names, options=options,
            metadata=metadata, batch_size=args.batch_size, chunk_images=args.chunk, workers=args.workers,
            writers=args.writers, save_maps=args.save_maps, images=not args.no_images, device=device,
            rho=args.rho, normalize_blocks=args.normalize_blocks, max_pixels=args.max_pixels, group=group,
            on_error=_error, on_note=_note, on_done=_done, progress=not args.quiet,
        )  # fmt: skip
    except RankFailure as error:
        return _rank_failed(error)
    except _usage_errors() as error:
        _error(_one_line(error))
        return EXIT_USAGE
    if report.total == 0:
        _error(f"no images found in {', '.join(images)}")
        return EXIT_USAGE
    if group.rank:
        return EXIT_SOME_FAILED if report.failures else EXIT_OK  # rank 0 says how the run went
    if report.failures:
        _error(report.summary())
        return EXIT_SOME_FAILED
    print(report.summary())
    return EXIT_OK


def _rank_failed(error: BaseException) -> int:
    _error(_one_line(error))
    return EXIT_RANK_FAILED


def _note(message: str) -> None:
    print(f"{_RANK}vitflow: note: {message}", file=sys.stderr)


def _done(folder: Path, manifest: dict) -> None:
    target = manifest["target"]
    probability = f" (p={target['probability']:.3f})" if "probability" in target else ""
    print(f"{_RANK}{manifest['image']}: {target.get('name', target['index'])}{probability} -> {folder}")


def _explain(args: argparse.Namespace) -> int:
    if args.bank is not None and args.target is not None:
        _error("--target and --bank exclude each other: with a bank the k-NN prediction is explained")
        return EXIT_USAGE
    if args.model is None:
        _note("no --model given: using the bundled demo ViT (trained on vitflow's synthetic scenes only)")
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
    except (OSError, ValueError) as error:
        _error(f"cannot write scenes to {scene_dir} ({_one_line(error)})")
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
    except (OSError, ValueError) as error:
        _error(_one_line(error))
        return EXIT_USAGE
    print(f"wrote {len(manifest['scenes'])} scenes to {args.out} (classes: {', '.join(manifest['classes'])})")
    return EXIT_OK


def _bank_build(args: argparse.Namespace) -> int:
    from vitflow.data.folders import list_labelled_images
    from vitflow.distributed import RankFailure
    from vitflow.targets.bank import model_identity
    from vitflow.targets.bank_build import build_bank

    try:
        group, device = _device(args.device)
        images = list_labelled_images(args.data)
        loaded = _load(args, headless=True)
        model = loaded.model.to(device)
        name = model_identity(model)  # what bank.check_model compares against when the bank is used
        bank = build_bank(
            model, loaded.preprocessing, images, args.out, preprocessing_config=loaded.preprocessing.config,
            model_name=name, batch_size=args.batch_size, chunk_images=args.chunk, half=args.half,
            device=device, progress=not args.quiet, on_error=_error, workers=args.workers, group=group,
        )  # fmt: skip
    except RankFailure as error:
        return _rank_failed(error)
    except _usage_errors() as error:
        _error(_one_line(error))
        return EXIT_USAGE
    skipped = bank.metadata.get("skipped_images", 0)
    if group.rank:
        return EXIT_SOME_FAILED if skipped else EXIT_OK
    print(f"wrote {args.out}: {len(bank)} features of dimension {bank.dim}, {bank.num_classes} classes, "
          f"model {name}")  # fmt: skip
    if skipped:  # this run's and, resumed, earlier runs' unreadable images
        _error(f"{skipped} of {len(images)} images could not be read and were left out")
        return EXIT_SOME_FAILED
    return EXIT_OK


def _bank_import(args: argparse.Namespace) -> int:
    from vitflow.targets.bank_import import dump_files, import_dump, read_class_names

    try:
        if args.dump and (args.features or args.labels):
            raise ValueError("give a dump folder or --features and --labels, not both")
        if args.dump:
            features, labels = dump_files(args.dump, args.split)
        elif args.features and args.labels:
            features, labels = args.features, args.labels
        else:
            raise ValueError("give a dump folder (DINO's --dump_features) or both --features and --labels")
        names = read_class_names(args.classes) if args.classes else None
        bank, notes = import_dump(features, labels, class_names=names, model_name=args.model, half=args.half)
        bank.save(args.out)
    except _usage_errors() as error:
        _error(_one_line(error))
        return EXIT_USAGE
    for note in notes:
        _note(note)
    print(f"{args.out}: {len(bank)} x {bank.dim} {str(bank.features.dtype).removeprefix('torch.')}, "
          f"{bank.num_classes} classes (from {features})")  # fmt: skip
    return EXIT_OK


def _bank_info(args: argparse.Namespace) -> int:
    import json

    from vitflow.targets import MemoryBank

    try:
        bank = MemoryBank.load(args.bank)
    except _usage_errors() as error:
        _error(_one_line(error))
        return EXIT_USAGE
    print(f"{args.bank}: {len(bank)} x {bank.dim} {str(bank.features.dtype).removeprefix('torch.')}, "
          f"{bank.num_classes} classes")  # fmt: skip
    print(json.dumps(bank.metadata, indent=2))
    return EXIT_OK


def _evaluate_chefer(args: argparse.Namespace) -> int:
    from vitflow.chefer import Source, evaluate_chefer
    from vitflow.distributed import RankFailure
    from vitflow.evaluation import check_names, metric_names
    from vitflow.progress import Progress

    progress = None

    def report(message: str) -> None:
        if progress is not None:
            progress.clear()
        _error(message)

    try:
        options = (
            ("metrics", args.metrics, ",".join(metric_names())),
            ("boxes", args.boxes, None),
            ("maps", args.maps, None),
            ("sanity", args.sanity, 0),
            ("first-object-only", args.first_object_only, False),
        )
        unused = [f"--{name}" for name, given, default in options if given != default]
        if unused:
            raise ValueError(f"{', '.join(unused)} do not apply to --protocol chefer (its metrics are fixed)")
        check_names(args.methods.split(","), [])
        group, device = _device(args.device)
        loaded = _load(args)
        total = len(Source.open(args.data).names)
        count = total if args.limit is None else min(args.limit, total)
        progress = Progress(count, "evaluate", enabled=not args.quiet and group.is_main)
        summary = evaluate_chefer(
            loaded.model, loaded.preprocessing, args.data, args.out, methods=args.methods.split(","),
            batch_size=args.batch_size, device=device, progress=progress, on_error=report,
            chunk_items=args.chunk, workers=args.workers, group=group, limit=args.limit,
        )  # fmt: skip
        progress.close()
    except RankFailure as error:
        return _rank_failed(error)
    except _usage_errors() as error:
        _error(_one_line(error))
        return EXIT_USAGE
    if group.rank:
        return EXIT_SOME_FAILED if summary["failed"] else EXIT_OK
    accuracy = "" if summary["accuracy"] is None else f" (model accuracy {summary['accuracy']:.3f})"
    print(
        f"evaluated {summary['items']} items{accuracy} with Chefer et al.'s protocol -> {args.out}/results.md"
    )
    print((Path(args.out) / "results.md").read_text(), end="")
    for note in summary.get("notes", []):
        _note(note)
    if summary["failed"]:
        _error(f"{summary['failed']} of {count} items could not be read and were left out")
        return EXIT_SOME_FAILED
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from vitflow.distributed import RankFailure
    from vitflow.evaluation import check_names, dataset_classes, evaluate, read_items, sanity_check
    from vitflow.progress import Progress

    progress = None

    def report(message: str) -> None:
        if progress is not None:
            progress.clear()
        _error(message)

    if args.protocol == "chefer":
        return _evaluate_chefer(args)
    try:
        if str(args.data).lower().endswith(".mat"):
            raise ValueError(
                f"{args.data}: a gtsegs_ijcv.mat file has no class labels for vitflow's protocol (which "
                "explains the true class); evaluate it with --protocol chefer (explains the predicted class)"
            )
        per_block = [m for m in args.per_block_metrics.split(",") if m]
        check_names(args.methods.split(","), [*args.metrics.split(","), *per_block])
        per_block_methods = None  # evaluate's default: DAAM, when it is among the methods
        if args.per_block_methods is not None:
            per_block_methods = [m for m in args.per_block_methods.split(",") if m]
            check_flow_methods(per_block_methods, args.methods.split(","))
        group, device = _device(args.device)
        texts = None
        if args.model and args.model.startswith("open_clip:") and not args.text:
            texts = [f"a photo of a {name.replace('_', ' ')}" for name in dataset_classes(args.data)]
        loaded = _load(args, texts=texts)
        items = read_items(args.data, "first" if args.first_object_only else "all", args.boxes)[: args.limit]
        saved = None
        if args.maps:
            from vitflow.mapfiles import load_maps

            saved = load_maps(args.maps)
        progress = Progress(len(items), "evaluate", enabled=not args.quiet and group.is_main)
        summary = evaluate(
            loaded.model, loaded.preprocessing, items, args.out, methods=args.methods.split(","),
            metrics=args.metrics.split(","), batch_size=args.batch_size, device=device, progress=progress,
            per_block_metrics=per_block, on_error=report, chunk_items=args.chunk, workers=args.workers,
            group=group, saved=saved, per_block_methods=per_block_methods,
        )  # fmt: skip
        progress.close()
        if group.rank:  # rank 0 reports and runs the sanity check
            return EXIT_SOME_FAILED if summary["failed"] else EXIT_OK
        if args.sanity:
            sanity_check(
                loaded.model, loaded.preprocessing, items[: args.sanity], args.out,
                methods=args.methods.split(","), batch_size=args.batch_size, device=device,
            )  # fmt: skip
    except RankFailure as error:
        return _rank_failed(error)
    except _usage_errors() as error:
        _error(_one_line(error))
        return EXIT_USAGE
    print(
        f"evaluated {summary['items']} items (model accuracy {summary['accuracy']:.3f}) -> "
        f"{args.out}/results.md"
    )
    print((Path(args.out) / "results.md").read_text(), end="")
    for note in summary.get("notes", []):
        _note(note)
    if args.sanity:
        print(
            f"sanity check on {min(args.sanity, len(items))} items: rank correlation with the trained "
            "model's maps after re-initialising the top k blocks (lower: the map depends on the weights)"
        )
        print((Path(args.out) / "sanity.md").read_text(), end="")
    if summary["failed"]:  # this run's and, resumed, earlier runs' unreadable images
        _error(f"{summary['failed']} of {len(items)} items could not be read and were left out")
        return EXIT_SOME_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    from vitflow import distributed

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        _error("interrupted; finished outputs are complete (files are written atomically), rerun to go on")
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
