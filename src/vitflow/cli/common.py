"""What the commands share: option groups, the model and device from the arguments, the one-line
reports (with the torchrun rank on ranks other than 0), and explaining files into a folder."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vitflow.data.images import MAX_PIXELS
from vitflow.models import model_prefixes
from vitflow.render import MODES
from vitflow.render.overlay import BLENDS

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_RANK_FAILED = 0, 1, 2, 3
# "[rank N] " on ranks other than 0 of a torchrun run (torchrun sets RANK): whose line it is
_RANK = f"[rank {os.environ['RANK']}] " if os.environ.get("RANK", "0") != "0" else ""


def _workers(text: str) -> int:
    return _whole_number(text, 0, "must be 0 (decode in the main process) or more")


def add_scale_options(parser: argparse.ArgumentParser, chunk: int) -> None:
    """Options of the commands that run over datasets (and under torchrun)."""
    from vitflow.data.loader import default_workers

    parser.add_argument(
        "--workers", type=_workers, metavar="N",
        help="DataLoader processes decoding images per rank (0: in the main process; default with a GPU "
        f"{default_workers('cuda')} here, the cores a rank has less one, at most 8; on the CPU "
        f"{default_workers('cpu')} here, none up to 5 cores, as the model's threads use them all)",
    )  # fmt: skip
    parser.add_argument(
        "--chunk", type=positive_int, default=chunk, metavar="N",
        help=f"images per resumable chunk, rounded up to whole batches (default {chunk}): the unit a rank "
        "takes under torchrun and a rerun skips once finished",
    )  # fmt: skip


def workers_for(args: argparse.Namespace, device) -> int:
    """``--workers``, or the default for a model on ``device``."""
    from vitflow.data.loader import default_workers

    return default_workers(device) if args.workers is None else args.workers


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "must be at least 1")


def _whole_number(text: str, minimum: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{rule}, got {value}")
    return value


def add_render_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that writes explanations."""
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)"
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
        "--blend",
        choices=BLENDS,
        default="fade",
        help="how the map meets the photo: fade (default: the overlay fades to the untinted photo where "
        "the map is low) or paper (alpha * cmap + image weight * photo everywhere, the paper's figures)",
    )
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
        type=positive_int,
        default=400,
        metavar="MS",
        help="ms per frame of the viewer's animation, flow.gif and flow.mp4 (default 400)",
    )
    parser.add_argument(
        "--gif-loop", type=int, default=0, metavar="N", help="with --gif: repeats, 0 = forever (default 0)"
    )
    parser.add_argument(
        "--gif", action="store_true",
        help="also write flow.gif, the attention flow as an animated GIF (about three times the cost of "
        "the rest of the pictures)",
    )  # fmt: skip
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
        "--display-size", type=positive_int, metavar="PX",
        help="long side of overlays, GIF/MP4 frames, figures and the viewer (default: the image's own, "
        "224 to 768, a larger one divided by a whole factor: 1600 px -> 534; the viewer shows pictures "
        "under 512 enlarged on the screen)",
    )  # fmt: skip
    parser.add_argument(
        "--figure-blocks",
        metavar="B,B,...",
        help="blocks to show in the figure, 1-based, e.g. 1,4,8,12 (default all)",
    )
    parser.add_argument(
        "--no-viewer", action="store_true",
        help="leave out viewer.html (the flow, drawn in the browser from the maps) and OUT/index.html",
    )  # fmt: skip
    parser.add_argument("--html", action="store_true", help=argparse.SUPPRESS)  # the viewer is the default
    parser.add_argument(
        "--blocks", action="store_true",
        help="also write input.png (the crop the model saw) and block_NN.png (the accumulated map after "
        "each block, at the display size)",
    )  # fmt: skip
    parser.add_argument(
        "--gif-size", type=positive_int, metavar="PX",
        help="with --gif: long side of its frames (default: the display size, at most 384)",
    )  # fmt: skip
    parser.add_argument(
        "--max-pixels", type=positive_int, default=MAX_PIXELS, metavar="N",
        help=f"refuse images with more pixels (a guard against decompression bombs; default {MAX_PIXELS:,})",
    )  # fmt: skip
    parser.add_argument(
        "--save-maps", nargs="?", const="float32", default="float16", choices=("float32", "float16"),
        metavar="DTYPE",
        help="precision of the per-block maps, logits and targets every run keeps in "
        "OUT/maps/chunk_NNNNNN.safetensors (default float16; --save-maps alone: float32, the exact "
        "values); read them with vitflow.load_maps(OUT) or score them with vitflow evaluate --maps OUT",
    )  # fmt: skip
    parser.add_argument(
        "--no-images", action="store_true", help="skip the pictures: the maps only (the fastest run)"
    )
    from vitflow.data.loader import default_writers

    parser.add_argument(
        "--writers", type=_workers, metavar="N",
        help="threads encoding the pictures while the model runs (0: in the main thread; default with a "
        f"GPU {default_writers('cuda')} here, half the cores a rank has, 2 to 8; on the CPU "
        f"{default_writers('cpu')} here, none up to 5 cores, as the model's threads use them all)",
    )  # fmt: skip
    add_scale_options(parser, chunk=512)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_model_options(parser: argparse.ArgumentParser, default: str) -> None:
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
        "--img-size", type=positive_int, metavar="PX",
        help="input size of a timm or torchvision model (default: read from the checkpoint's position "
        "embedding, else the architecture's)",
    )  # fmt: skip


BUNDLE_FILES = (
    "OUT/<image name>/ receives final.jpg (the explanation, the accumulated map after the last block, "
    "drawn on the original image where the model's crop came from, the rest dimmed; --on crop draws on "
    "the crop), viewer.html (the attention flow block by block, drawn by the browser from the maps and "
    "one copy of the photo: play, per-block maps, normalisation, colormap) and manifest.json (model, "
    "image, top-5 classes, target, per-block map statistics); OUT/index.html lists them a page at a "
    "time. The maps themselves go to OUT/maps/chunk_NNNNNN.safetensors (vitflow.load_maps). With --gif "
    "also flow.gif, with --blocks input.png and block_NN.png (every block), with --mp4 and --figure "
    "flow.mp4 and figure.png/.pdf/.svg. Files are written atomically; manifest.json comes last."
)


def say_error(message: str) -> None:
    print(f"{_RANK}vitflow: error: {message}", file=sys.stderr)


def say_note(message: str) -> None:
    print(f"{_RANK}vitflow: note: {message}", file=sys.stderr)


def say_done(folder: Path, manifest: dict) -> None:
    target = manifest["target"]
    probability = f" (p={target['probability']:.3f})" if "probability" in target else ""
    print(f"{_RANK}{manifest['image']}: {target.get('name', target['index'])}{probability} -> {folder}")


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def usage_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (model, checkpoint, bank, target, options, files): one line, exit 2."""
    from vitflow.explainer.capture import DecompositionError
    from vitflow.models.checkpoints import ModelLoadError

    return (ModelLoadError, DecompositionError, ValueError, TypeError, NotImplementedError, OSError)


def resolve_device(name: str):
    """The device ``--device`` names and this process's place in a torchrun run (rank ``N``
    gets ``cuda:LOCAL_RANK``; outside torchrun, rank 0 of 1)."""
    import torch

    from vitflow.runs import distributed

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


def load_named_model(args: argparse.Namespace, headless: bool = False, texts=None):
    """The model the arguments name (the demo ViT without --model); ``headless`` drops its classifier."""
    from vitflow.models import LoadedModel, load_model

    if args.model is None:
        from vitflow.data.scenes import CLASS_NAMES
        from vitflow.models.demo import NAME, load_demo_backbone, load_demo_model

        for option in ("checkpoint", "img_size", "text"):
            if getattr(args, option, None):
                raise ValueError(f"--{option.replace('_', '-')} needs --model (the architecture it is for)")
        model, preprocessing = load_demo_backbone() if headless else load_demo_model()
        return LoadedModel(model, preprocessing, list(CLASS_NAMES), NAME)
    return load_model(
        args.model, args.checkpoint, headless=headless, texts=texts or getattr(args, "text", None),
        img_size=getattr(args, "img_size", None),
    )  # fmt: skip


def check_render_options(args: argparse.Namespace) -> tuple[int, ...] | None:
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


def explain_into(args: argparse.Namespace, images: Sequence[str]) -> int:
    """Explain image files and folders into ``args.out``; report each failure on one line and carry on."""
    from vitflow.outputs.bundle import RenderOptions
    from vitflow.runs.explain import explain_files

    try:
        group, device = resolve_device(args.device)
        figure_blocks = check_render_options(args)
        loaded = load_named_model(args, headless=args.bank is not None)
        target, names = args.target, loaded.names
        if target is not None:
            from vitflow.targets.names import class_index

            target = class_index(target, names)
        if args.bank is not None:
            from vitflow.targets import KNNTarget, MemoryBank
            from vitflow.targets.knn import DEFAULT_K

            bank = MemoryBank.load(args.bank)
            bank.check_model(loaded.model)
            k = args.k
            if k is None:
                k = min(DEFAULT_K, len(bank))
                if k < DEFAULT_K:
                    say_note(f"the bank holds {len(bank)} features, so k-NN uses k = {k} "
                             f"(default {DEFAULT_K})")
            target = KNNTarget(bank, k=k, temperature=args.temperature)
            names = bank.class_names
        options = RenderOptions(
            mode=args.mode, alpha=args.alpha, image_weight=args.image_weight, cmap=args.cmap,
            blend=args.blend, gif_duration_ms=args.gif_duration, gif_loop=args.gif_loop, mp4=args.mp4,
            figure=args.figure,
            figure_blocks=figure_blocks, html=not args.no_viewer, gif=args.gif, on=args.on,
            display_size=args.display_size, blocks=args.blocks, gif_size=args.gif_size,
        )  # fmt: skip
        metadata = {
            "model": loaded.label,
            "checkpoint": str(args.checkpoint) if getattr(args, "checkpoint", None) else None,
            "bank": str(args.bank) if args.bank else None,
        }
        report = explain_files(
            loaded.model, loaded.preprocessing, images, args.out, target=target, names=names, options=options,
            metadata=metadata, batch_size=args.batch_size, chunk_images=args.chunk,
            workers=workers_for(args, device), writers=args.writers,  # None: the default for the device
            save_maps=args.save_maps, images=not args.no_images, device=device,
            rho=args.rho, normalize_blocks=args.normalize_blocks, max_pixels=args.max_pixels, group=group,
            on_error=say_error, on_note=say_note, on_done=say_done, progress=not args.quiet,
            keep_manifests=False,
        )  # fmt: skip
    except command_errors() as error:
        return refuse(error)
    if report.total == 0:
        say_error(f"no images found in {', '.join(images)}")
        return EXIT_USAGE
    if group.rank:
        return EXIT_SOME_FAILED if report.failures else EXIT_OK  # rank 0 says how the run went
    if report.failures:
        say_error(report.summary())
        return EXIT_SOME_FAILED
    print(report.summary())
    return EXIT_OK


def command_errors() -> tuple[type[BaseException], ...]:
    """What a command answers in one line (``refuse``): a lost or failed rank, bad input."""
    from vitflow.runs.distributed import RankFailure

    return (RankFailure, *usage_errors())


def refuse(error: BaseException) -> int:
    """One line for ``error``; exit status 3 for a failed rank, else 2 (bad input)."""
    from vitflow.runs.distributed import RankFailure

    say_error(one_line(error))
    return EXIT_RANK_FAILED if isinstance(error, RankFailure) else EXIT_USAGE
