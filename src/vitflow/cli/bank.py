"""``vitflow bank build | import | info``: memory banks for self-supervised ViTs."""

from __future__ import annotations

import argparse

from vitflow.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    add_model_options,
    add_scale_options,
    command_errors,
    load_named_model,
    one_line,
    positive_int,
    refuse,
    resolve_device,
    say_error,
    say_note,
    usage_errors,
    workers_for,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    bank = commands.add_parser("bank", help="build or inspect memory banks for self-supervised ViTs")
    bank_commands = bank.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    build = bank_commands.add_parser(
        "build",
        help="compute a labelled memory bank of L2-normalised features",
        description="Compute the L2-normalised features of labelled images with a backbone (num_classes=0) "
        "and store them with their labels as a memory bank (safetensors + JSON metadata). Interrupted "
        "builds resume from OUT.parts/ without recomputing finished chunks.",
    )
    add_model_options(build, "the bundled demo ViT's backbone")
    build.add_argument(
        "--data",
        required=True,
        help="folder with one sub-folder of images per class, or a list file of 'IMAGE_PATH CLASS' lines",
    )
    build.add_argument("--out", required=True, metavar="FILE", help="bank file to write")
    build.add_argument(
        "--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)"
    )
    add_scale_options(build, chunk=4096)
    build.add_argument("--half", action="store_true", help="store features in float16")
    build.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(handler=run_build, text=None)
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
    imp.set_defaults(handler=run_import)
    info = bank_commands.add_parser("info", help="print a memory bank's size, classes and metadata")
    info.add_argument("bank", metavar="FILE")
    info.set_defaults(handler=run_info)


def run_build(args: argparse.Namespace) -> int:
    from vitflow.adapters import model_identity
    from vitflow.data.folders import list_labelled_images
    from vitflow.runs.bank_build import build_bank

    try:
        group, device = resolve_device(args.device)
        images = list_labelled_images(args.data)
        loaded = load_named_model(args, headless=True)
        model = loaded.model.to(device)
        name = model_identity(model)  # what bank.check_model compares against when the bank is used
        bank = build_bank(
            model, loaded.preprocessing, images, args.out, preprocessing_config=loaded.preprocessing.config,
            model_name=name, batch_size=args.batch_size, chunk_images=args.chunk, half=args.half,
            device=device, progress=not args.quiet, on_error=say_error, workers=workers_for(args, device),
            group=group,
        )  # fmt: skip
    except command_errors() as error:
        return refuse(error)
    skipped = bank.metadata.get("skipped_images", 0)
    if group.rank:
        return EXIT_SOME_FAILED if skipped else EXIT_OK
    print(f"wrote {args.out}: {len(bank)} features of dimension {bank.dim}, {bank.num_classes} classes, "
          f"model {name}")  # fmt: skip
    if skipped:  # this run's and, resumed, earlier runs' unreadable images
        say_error(f"{skipped} of {len(images)} images could not be read and were left out")
        return EXIT_SOME_FAILED
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
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
    except usage_errors() as error:
        say_error(one_line(error))
        return EXIT_USAGE
    for note in notes:
        say_note(note)
    print(f"{args.out}: {len(bank)} x {bank.dim} {str(bank.features.dtype).removeprefix('torch.')}, "
          f"{bank.num_classes} classes (from {features})")  # fmt: skip
    return EXIT_OK


def run_info(args: argparse.Namespace) -> int:
    import json

    from vitflow.targets import MemoryBank

    try:
        bank = MemoryBank.load(args.bank)
    except usage_errors() as error:
        say_error(one_line(error))
        return EXIT_USAGE
    print(f"{args.bank}: {len(bank)} x {bank.dim} {str(bank.features.dtype).removeprefix('torch.')}, "
          f"{bank.num_classes} classes")  # fmt: skip
    print(json.dumps(bank.metadata, indent=2))
    return EXIT_OK
