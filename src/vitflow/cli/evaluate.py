"""``vitflow evaluate``: score methods with metrics over a dataset (vitflow's protocol or Chefer et al.'s)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitflow.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_model_options,
    add_scale_options,
    command_errors,
    load_named_model,
    positive_int,
    refuse,
    resolve_device,
    say_error,
    say_note,
    workers_for,
)
from vitflow.methods.run import check_flow_methods, method_names
from vitflow.metrics.run import default_per_block_metrics, metric_names


def add_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="score DAAM and baseline methods with localisation and faithfulness metrics",
        description="Run every METHOD and METRIC over a dataset: a scenes folder written by vitflow scenes "
        "(object masks from boxes.json; two-object scenes explain each object) or an ImageFolder tree "
        "(mask-free metrics only). Writes OUT/records.jsonl (per image; a rerun resumes), results.json, "
        "results.csv, results.md and per_block.png (the per-block metrics after each block, for "
        "--per-block-methods).",
    )
    add_model_options(evaluate, "the bundled demo ViT")
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
        help="metrics also computed for the map after every block, from "
        f"{', '.join(default_per_block_metrics())} (default: those of --metrics; empty for none)",
    )  # fmt: skip
    evaluate.add_argument(
        "--per-block-methods",
        help="comma-separated methods whose map after every block the per-block metrics score: DAAM and "
        "its variants that accumulate (daam, daam_block_norm, daam_from_K, daam_rollout, daam_generic, "
        "daam_concentration); each must be among --methods (default: daam, when it is)",
    )
    evaluate.add_argument(
        "--first-object-only", action="store_true", help="explain only the first object of a scene"
    )
    evaluate.add_argument("--limit", type=positive_int, help="evaluate only the first N items")
    evaluate.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default 32)")
    evaluate.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    add_scale_options(evaluate, chunk=256)
    evaluate.add_argument(
        "--sanity", type=positive_int, default=0, metavar="N",
        help="also run the cascading-randomisation sanity check (Adebayo et al.) for every method on "
        "the first N items: OUT/sanity.json, OUT/sanity.md",
    )  # fmt: skip
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vitflow.data.items import dataset_classes, read_items
    from vitflow.methods.run import check_names
    from vitflow.runs.evaluate import evaluate, sanity_check
    from vitflow.runs.progress import Progress

    progress = None

    def report(message: str) -> None:
        if progress is not None:
            progress.clear()
        say_error(message)

    if args.protocol == "chefer":
        return _run_chefer(args)
    try:
        if str(args.data).lower().endswith(".mat"):
            raise ValueError(
                f"{args.data}: a gtsegs_ijcv.mat file has no class labels for vitflow's protocol (which "
                "explains the true class); evaluate it with --protocol chefer (explains the predicted class)"
            )
        chosen = args.metrics.split(",")
        if args.per_block_metrics is None:
            per_block = default_per_block_metrics(chosen)
        else:
            per_block = [m for m in args.per_block_metrics.split(",") if m]
        check_names(args.methods.split(","), [*args.metrics.split(","), *per_block])
        per_block_methods = None  # evaluate's default: DAAM, when it is among the methods
        if args.per_block_methods is not None:
            per_block_methods = [m for m in args.per_block_methods.split(",") if m]
            check_flow_methods(per_block_methods, args.methods.split(","))
        group, device = resolve_device(args.device)
        texts = None
        if args.model and args.model.startswith("open_clip:") and not args.text:
            texts = [f"a photo of a {name.replace('_', ' ')}" for name in dataset_classes(args.data)]
        loaded = load_named_model(args, texts=texts)
        items = read_items(args.data, "first" if args.first_object_only else "all", args.boxes)[: args.limit]
        saved = None
        if args.maps:
            from vitflow.outputs.maps import load_maps

            saved = load_maps(args.maps)
        progress = Progress(len(items), "evaluate", enabled=not args.quiet and group.is_main)
        summary = evaluate(
            loaded.model, loaded.preprocessing, items, args.out, methods=args.methods.split(","),
            metrics=args.metrics.split(","), batch_size=args.batch_size, device=device, progress=progress,
            per_block_metrics=per_block, on_error=report, chunk_items=args.chunk,
            workers=workers_for(args, device),
            group=group, saved=saved, per_block_methods=per_block_methods, on_note=say_note,
        )  # fmt: skip
        progress.close()
        if group.rank:  # rank 0 reports and runs the sanity check
            return EXIT_SOME_FAILED if summary["failed"] else EXIT_OK
        if args.sanity:
            sanity_check(
                loaded.model, loaded.preprocessing, items[: args.sanity], args.out,
                methods=args.methods.split(","), batch_size=args.batch_size, device=device,
            )  # fmt: skip
    except command_errors() as error:
        return refuse(error)
    print(
        f"evaluated {summary['items']} items (model accuracy {summary['accuracy']:.3f}) -> "
        f"{args.out}/results.md"
    )
    print((Path(args.out) / "results.md").read_text(), end="")
    for note in summary.get("notes", []):
        say_note(note)
    if args.sanity:
        print(
            f"sanity check on {min(args.sanity, len(items))} items: rank correlation with the trained "
            "model's maps after re-initialising the top k blocks (lower: the map depends on the weights)"
        )
        print((Path(args.out) / "sanity.md").read_text(), end="")
    if summary["failed"]:  # this run's and, resumed, earlier runs' unreadable images
        say_error(f"{summary['failed']} of {len(items)} items could not be read and were left out")
        return EXIT_SOME_FAILED
    return EXIT_OK


def _run_chefer(args: argparse.Namespace) -> int:
    from vitflow.methods.run import check_names
    from vitflow.metrics.run import metric_names
    from vitflow.runs.progress import Progress
    from vitflow.runs.protocol import Source, evaluate_chefer

    progress = None

    def report(message: str) -> None:
        if progress is not None:
            progress.clear()
        say_error(message)

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
        group, device = resolve_device(args.device)
        loaded = load_named_model(args)
        total = len(Source.open(args.data).names)
        count = total if args.limit is None else min(args.limit, total)
        progress = Progress(count, "evaluate", enabled=not args.quiet and group.is_main)
        summary = evaluate_chefer(
            loaded.model, loaded.preprocessing, args.data, args.out, methods=args.methods.split(","),
            batch_size=args.batch_size, device=device, progress=progress, on_error=report,
            chunk_items=args.chunk, workers=workers_for(args, device), group=group, limit=args.limit,
        )  # fmt: skip
        progress.close()
    except command_errors() as error:
        return refuse(error)
    if group.rank:
        return EXIT_SOME_FAILED if summary["failed"] else EXIT_OK
    accuracy = "" if summary["accuracy"] is None else f" (model accuracy {summary['accuracy']:.3f})"
    print(
        f"evaluated {summary['items']} items{accuracy} with Chefer et al.'s protocol -> {args.out}/results.md"
    )
    print((Path(args.out) / "results.md").read_text(), end="")
    for note in summary.get("notes", []):
        say_note(note)
    if summary["failed"]:
        say_error(f"{summary['failed']} of {count} items could not be read and were left out")
        return EXIT_SOME_FAILED
    return EXIT_OK
