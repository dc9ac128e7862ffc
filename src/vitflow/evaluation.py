"""``vitflow evaluate``: every method and metric on a labelled dataset with object masks, in
batches, resumable, with DAAM's per-block curves.

Data: a scenes folder (``images/<class>/*.png`` + ``boxes.json`` with mask files, as written by
``vitflow scenes``) or any ImageFolder tree (then only mask-free metrics run). Items are cut into
chunks of whole batches (:mod:`vitflow.distributed`); each finished chunk's per-image records are
written atomically to ``OUT/chunks/``, so a rerun (with any number of ranks) skips them. Rank 0
joins them into ``OUT/records.jsonl`` in item order, then the summary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitflow.adapters import Adapter, resolve_adapter
from vitflow.baselines import MethodInputs
from vitflow.data.loader import ImageFiles, batches
from vitflow.data.preprocess import Preprocessing
from vitflow.distributed import SINGLE, ChunkedRun, Group, Ledger, describer, run_chunks
from vitflow.files import atomic_path, write_bytes_atomic, write_json_atomic
from vitflow.mapfiles import SavedMaps
from vitflow.metrics import ScoringContext, cascading_randomization
from vitflow.registry import METHODS, METRICS
from vitflow.targets.bank import model_identity


def method_names() -> list[str]:
    """Every registered method (``daam_from_K`` is a pattern, accepted but not listed)."""
    return METHODS.names()


def metric_names() -> list[str]:
    return METRICS.names()


def default_per_block_metrics() -> list[str]:
    return [e.name for e in METRICS.entries() if e.info.get("per_block")]


def check_names(methods: Sequence[str], metrics: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the known ones for an unknown method or metric."""
    for name in methods:
        METHODS.lookup(name)
    for name in metrics:
        METRICS.lookup(name)


def check_flow_methods(per_block_methods: Sequence[str], methods: Sequence[str]) -> None:
    """Raise ``ValueError`` for a per-block method that makes no attention flow or is not evaluated."""
    for name in per_block_methods:
        if not is_flow_method(name):
            flows = ", ".join(e.info.get("display", e.name) for e in METHODS.entries() if e.info.get("flow"))
            raise ValueError(f"{name!r} has no map after each block; per-block methods are {flows}")
        if name not in methods:
            raise ValueError(f"per-block method {name!r} is not among the evaluated methods; add it to them")


def higher_is_better(metric: str) -> bool:
    return METRICS.lookup(metric)[0].info["higher_is_better"]


@dataclass(frozen=True)
class Item:
    """One explained object: its image, class, mask and a name unique in the dataset. ``mask`` is
    an ``(H, W)`` bool array at the image's size, or where to read it (a mask image, 255 inside,
    or an ILSVRC box annotation ``.xml``), read when the item is: a dataset's masks are never all
    in memory at once."""

    path: Path
    target: int
    mask: np.ndarray | Path | None
    name: str


def load_mask(source: np.ndarray | Path | None) -> np.ndarray | None:
    """An :class:`Item`'s mask as an ``(H, W)`` bool array."""
    if source is None or isinstance(source, np.ndarray):
        return source
    source = Path(source)
    if source.suffix.lower() == ".xml":
        return boxes_mask(source)
    with Image.open(source) as picture:
        return np.asarray(picture.convert("L")) > 0


def boxes_mask(xml_path: Path) -> np.ndarray:
    """The union of an ImageNet (ILSVRC / PASCAL VOC) annotation's boxes as an ``(H, W)`` mask."""
    import xml.etree.ElementTree as ET

    root = ET.parse(xml_path).getroot()
    width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
    mask = np.zeros((height, width), dtype=bool)
    for box in root.iter("bndbox"):
        x0, y0, x1, y1 = (int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
        mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True  # ILSVRC boxes are inclusive
    return mask


def dataset_classes(data: str | Path) -> list[str]:
    """The class names of a scenes folder or an ImageFolder tree, in label order."""
    manifest = Path(data) / "boxes.json"
    if manifest.exists():
        return list(json.loads(manifest.read_text())["classes"])
    from vitflow.data.folders import list_labelled_images

    return list_labelled_images(data).class_names


def read_items(data: str | Path, objects: str = "all", boxes: str | Path | None = None) -> list[Item]:
    """Items to explain: one per object (its class and mask) for a scenes folder, one per image
    (its folder's class) for an ImageFolder tree, with masks from ``boxes/<image stem>.xml``
    (ILSVRC box annotations) when given."""
    data = Path(data)
    manifest = data / "boxes.json"
    if manifest.exists():
        scenes = json.loads(manifest.read_text())
        classes = scenes["classes"]
        items = []
        for entry in scenes["scenes"]:
            chosen = entry["objects"] if objects == "all" else entry["objects"][:1]
            for k, obj in enumerate(chosen):
                mask = data / obj["mask"]
                items.append(
                    Item(data / entry["image"], classes.index(obj["class"]), mask, f"{entry['id']}:{k}")
                )
        return items
    from vitflow.data.folders import list_labelled_images

    images = list_labelled_images(data)
    items = []
    for path, label in zip(images.paths, images.labels, strict=True):
        mask = None
        if boxes is not None:
            xml = Path(boxes) / f"{path.stem}.xml"
            if not xml.exists():
                raise ValueError(f"{xml}: no box annotation for {path.name}")
            mask = xml
        items.append(Item(path, label, mask, path.stem))
    return items


def _mask_at(mask: np.ndarray, preprocess) -> torch.Tensor:
    """A mask through the same geometry as its image (resize, crop): the preprocessing applied to
    the mask drawn as a black-and-white image, then thresholded at half."""
    picture = Image.fromarray(np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2))
    return torch.from_numpy(preprocess.to_image(preprocess(picture))[..., 0] > 127)


class _MaskAt:
    """The ``extra`` of an evaluation's :class:`~vitflow.data.loader.ImageFiles`: item ``i``'s
    mask through its image's preprocessing, read in the decoding worker (picklable)."""

    def __init__(self, items: Sequence[Item], preprocess: Preprocessing) -> None:
        self.items, self.preprocess = items, preprocess

    def __call__(self, index: int, image) -> torch.Tensor | None:
        mask = load_mask(self.items[index].mask)
        return None if mask is None else _mask_at(mask, self.preprocess)


@dataclass
class _Inputs:
    """A batch of items ready for the methods: the readable ones, their images, classes and
    masks (``None`` unless every item has one) on the device, and the unreadable ones' errors."""

    items: list[Item]
    x: torch.Tensor | None
    target: torch.Tensor | None
    masks: torch.Tensor | None
    errors: list[str]


def _batches(
    items: Sequence[Item], plan: Sequence[Sequence[int]], preprocess: Preprocessing, device, workers: int = 0
):
    """:class:`_Inputs` for each batch of ``plan`` (index lists into ``items``), in order, decoded
    by ``workers`` ``DataLoader`` processes."""
    device = torch.device(device)
    files = ImageFiles([item.path for item in items], preprocess, extra=_MaskAt(items, preprocess))
    for batch in batches(files, plan, workers=workers, pin_memory=device.type == "cuda"):
        errors = [message for _, message in batch.errors]
        if batch.x is None:
            yield _Inputs([], None, None, None, errors)
            continue
        chosen = [items[i] for i in batch.indices]
        target = torch.tensor([item.target for item in chosen], device=device)
        masks = None
        if all(m is not None for m in batch.extras):
            masks = torch.stack(batch.extras).to(device)
        yield _Inputs(chosen, batch.x.to(device, non_blocking=True), target, masks, errors)


def explain_all(adapter: Adapter, x: torch.Tensor, target: torch.Tensor, methods: Sequence[str]) -> dict:
    """Maps of every method for a batch: ``(B, h, w)`` (or ``(B, H, W)``), plus, for each method
    that makes an attention flow (registered with ``flow=True``: DAAM and its variants),
    ``"<method>/flow"`` ``(B, L, h, w)``, its map after each block; the method's map is the last.
    Methods sharing a pass (the DAAM variants; the attention methods) share one."""
    input_grad = any(METHODS.lookup(m)[0].info.get("input_grad") for m in methods)
    inputs = MethodInputs(adapter, x, target, input_grad=input_grad)
    maps = {}
    for name in methods:
        out = METHODS.call(name, inputs).float()
        if is_flow_method(name):
            maps[f"{name}/flow"] = out
            out = out[:, -1]
        maps[name] = out
    return maps


def is_flow_method(name: str) -> bool:
    """Whether method ``name`` makes an attention flow (a map after every block)."""
    return bool(METHODS.lookup(name)[0].info.get("flow"))


def score_maps(
    context: ScoringContext, maps: torch.Tensor, metrics: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Every requested metric for one method's ``(B, h, w)`` maps: ``{metric: (B,)}`` on the CPU;
    mask metrics are left out when the batch has no masks."""
    out = {}
    for name in metrics:
        if METRICS.lookup(name)[0].info["needs_mask"] and context.masks is None:
            continue
        out[name] = METRICS.call(name, maps, context).double().cpu()
    return out


def evaluate(
    model: nn.Module,
    preprocess: Preprocessing,
    items: Sequence[Item],
    out: str | Path,
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    per_block_metrics: Sequence[str] | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress=None,
    adapter: Adapter | type[Adapter] | None = None,
    on_error: Callable[[str], None] | None = None,
    chunk_items: int = 256,
    workers: int = 0,
    group: Group = SINGLE,
    saved: SavedMaps | None = None,
    per_block_methods: Sequence[str] | None = None,
) -> dict:
    """Run every method and metric over ``items``; write per-image records to ``out/records.jsonl``
    and return the summary (also written as results.*).

    Methods and metrics are names in :data:`~vitflow.registry.METHODS` / ``METRICS`` (default:
    all; per-block: those registered with ``per_block=True``). Images that cannot be read are
    reported through ``on_error`` (one line each), left out, and counted in ``summary["failed"]``.
    Items go in batches of ``batch_size``, ``chunk_items`` to a resumable chunk (rounded up to
    whole batches); under ``torchrun`` each rank (``group``) takes its share of the chunks and the
    records are those of one process. ``workers``: ``DataLoader`` processes decoding images.
    ``saved``: maps saved by ``vitflow explain --save-maps`` (:func:`vitflow.load_maps`), scored
    as one more method, ``saved``, without running the model for them: each item gets the saved
    final map of its image (for the class it was made for). ``per_block_methods``: the methods
    whose map after every block is scored by ``per_block_metrics`` (DAAM and its variants that
    make an attention flow; default: DAAM when it is among ``methods``).
    """
    methods = list(methods or method_names())
    metrics = list(metrics or metric_names())
    per_block_metrics = default_per_block_metrics() if per_block_metrics is None else list(per_block_metrics)
    check_names(methods, [*metrics, *per_block_metrics])
    if per_block_methods is None:
        per_block_methods = ["daam"] if "daam" in methods else []
    check_flow_methods(per_block_methods, methods)
    out = Path(out)
    if group.is_main:
        out.mkdir(parents=True, exist_ok=True)
    model = model.eval().to(device)
    adapter = resolve_adapter(model, adapter)
    methods, notes = applicable_methods(adapter, methods)
    per_block_methods = [m for m in per_block_methods if m in methods]  # applicable to this model
    lookup = _saved_lookup(saved, items) if saved is not None else None
    state = {
        "model": model_identity(model), "methods": methods + (["saved"] if saved is not None else []),
        "metrics": metrics, "per_block_metrics": per_block_metrics, "per_block_methods": per_block_methods,
    }  # fmt: skip
    run = ChunkedRun.open(
        len(items), batch_size, chunk_items, out / "chunks", state,
        lambda i: f"{items[i].name}\t{items[i].path}\t{items[i].target}", group,
        strict=True, what="evaluate", suffix=".json",
    )  # fmt: skip
    plan, ledger, todo = run.plan, run.ledger, run.todo
    if progress is not None:
        progress.skip(run.items_done())
    inputs = iter(_batches(items, run.my_batches(), preprocess, device, workers))
    report = on_error or (lambda message: None)

    def evaluate_chunk(chunk: int) -> int:
        records, failures = [], []
        for _ in plan[chunk]:
            batch = next(inputs)
            for message in batch.errors:
                failures.append(message)
                report(message)
            if progress is not None:
                progress.update(len(batch.errors))
            if batch.x is None:
                continue
            given = None if lookup is None else lookup(batch.items, batch.x.device)
            records += _score_batch(
                adapter, batch, methods, metrics, per_block_metrics, given, per_block_methods
            )
            if progress is not None:
                progress.update(len(batch.items))
        record = {"rank": group.rank, "world_size": group.world_size, "records": records}
        write_json_atomic(ledger.path(chunk, ".json"), {**record, "failures": failures})
        return sum(len(b) for b in plan[chunk])

    describe = describer(plan, "items", lambda i: items[i].name)
    run_chunks(group, todo, evaluate_chunk, describe, progress.update if progress is not None else None)
    summary = None
    if group.is_main:
        ledger.prune(".json")
        summary = _join_records(out, ledger, len(plan), len(items))
        if summary is not None:
            summary.update(summarize(out, methods + (["saved"] if saved is not None else []), metrics))
            summary["notes"] = notes + summary.get("notes", [])
    summary = group.first(summary)
    if summary is None:
        raise ValueError(f"none of the {len(items)} items could be evaluated (no image could be read)")
    return summary


def _saved_lookup(saved: SavedMaps, items: Sequence[Item]):
    """``lookup(batch items, device) -> (B, h, w)``: each item's saved final map, found by its
    image file; refuses up front when an item's image has no saved map."""
    rows = {Path(image).resolve(): row for row, image in enumerate(saved.images)}
    missing = [item.path for item in items if item.path.resolve() not in rows]
    if missing:
        raise ValueError(
            f"the saved maps have no map of {missing[0]} (and {len(missing) - 1} more); explain the same "
            "images with vitflow explain --save-maps, or leave out --maps"
        )
    final = saved.result.final

    def lookup(chosen: Sequence[Item], device) -> torch.Tensor:
        picked = [rows[item.path.resolve()] for item in chosen]
        return final[picked].to(device=device, dtype=torch.float32)

    return lookup


def _score_batch(
    adapter: Adapter, batch: _Inputs, methods: list[str], metrics: list[str], per_block_metrics: list[str],
    saved: torch.Tensor | None = None, per_block_methods: Sequence[str] = ("daam",),
) -> list[dict]:  # fmt: skip
    """The per-item records of one batch: every method's map scored by every metric, the maps after
    each block of ``per_block_methods`` by the per-block metrics, and ``saved`` maps ``(B, h, w)``
    as method ``saved``."""
    x, target = batch.x, batch.target
    maps = explain_all(adapter, x, target, methods)
    if saved is not None:
        maps["saved"] = saved
        methods = [*methods, "saved"]
    with torch.no_grad():
        correct = (adapter.forward(x).argmax(1) == target).cpu()
    context = ScoringContext(adapter.forward, x, target, batch.masks)
    scores = {m: score_maps(context, maps[m], metrics) for m in methods}
    per_block = {}
    for m in per_block_methods if per_block_metrics else ():
        flow = maps[f"{m}/flow"]
        empty = (flow.flatten(2).abs().amax(dim=-1) == 0).cpu()  # (B, L): nothing accumulated yet
        per_block[m] = []
        for b in range(flow.shape[1]):
            scored = score_maps(context, flow[:, b], per_block_metrics)
            per_block[m].append({k: v.masked_fill(empty[:, b], math.nan) for k, v in scored.items()})
    return [
        {
            "item": item.name,
            "target": item.target,
            "correct": bool(correct[i]),
            "scores": {m: {k: float(v[i]) for k, v in s.items()} for m, s in scores.items()},
            "per_block": {m: [_item_scores(s, i) for s in ss] for m, ss in per_block.items()},
        }
        for i, item in enumerate(batch.items)
    ]


def _item_scores(scores: dict[str, torch.Tensor], i: int) -> dict[str, float | None]:
    """One item's per-block scores; ``None`` where its map was empty (JSON has no NaN)."""
    return {k: None if math.isnan(float(v[i])) else float(v[i]) for k, v in scores.items()}


def _join_records(out: Path, ledger: Ledger, chunks: int, total: int) -> dict | None:
    """Write ``out/records.jsonl`` from the chunks' records, in item order, streaming one chunk
    at a time; ``None`` when no item could be read."""
    failed, count = 0, 0
    with atomic_path(out / "records.jsonl") as tmp, open(tmp, "w") as handle:
        for chunk in range(chunks):
            record = json.loads(ledger.path(chunk, ".json").read_text())
            failed += len(record["failures"])
            count += len(record["records"])
            for line in record["records"]:
                handle.write(json.dumps(line) + "\n")
    if count == 0:  # nothing could be read: no records file, not an empty one
        (out / "records.jsonl").unlink()
        return None
    return {"failed": failed}


def applicable_methods(adapter: Adapter, methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """The methods that are defined for the adapter's model, and a note on any left out."""
    if adapter.full_attention():
        return list(methods), []
    kept = [m for m in methods if not METHODS.lookup(m)[0].info.get("full_attention")]
    dropped = [m for m in methods if m not in kept]
    if not dropped:
        return kept, []
    name = type(adapter.model).__name__
    return kept, [f"{', '.join(dropped)} left out: {name}'s class-attention blocks have no token-to-token "
                  "attention to propagate"]  # fmt: skip


def sanity_check(
    model: nn.Module,
    preprocess: Preprocessing,
    items: Sequence[Item],
    out: str | Path,
    methods: Sequence[str] | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    adapter: Adapter | type[Adapter] | None = None,
) -> dict:
    """Cascading randomisation (Adebayo et al. 2018) for every method on ``items``, each explained
    for its true class: the mean Spearman rank correlation between a method's map of the trained
    model and its map after re-initialising the top ``k`` blocks, ``k = 1..L``. All methods see the
    same randomised models. Writes ``OUT/sanity.json`` and ``OUT/sanity.md``; returns the dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().to(device)
    adapter = resolve_adapter(model, adapter)
    methods, _ = applicable_methods(adapter, methods or method_names())

    def adapter_for(m: nn.Module) -> Adapter:  # the randomised copy is the same family
        return adapter if m is adapter.model else type(adapter)(m)

    sums: dict[str, torch.Tensor] = {}
    used = 0
    plan = [range(s, min(s + batch_size, len(items))) for s in range(0, len(items), batch_size)]
    for batch in _batches(items, plan, preprocess, device):  # unreadable images: evaluate reports them
        if batch.x is None:
            continue
        used += len(batch.items)
        x, target = batch.x, batch.target

        def explain(m: nn.Module, x=x, target=target) -> dict[str, torch.Tensor]:
            maps = explain_all(adapter_for(m), x, target, methods)
            return {name: maps[name] for name in methods}

        rows = cascading_randomization(adapter.model, explain, lambda m: adapter_for(m).blocks(), seed=seed)
        for name, row in rows.items():
            sums[name] = sums.get(name, 0) + row.double().sum(dim=1).cpu()
    correlation = {name: (total / used).tolist() for name, total in sums.items()}
    result = {"items": used, "seed": seed, "spearman_after_top_k_randomised": correlation}
    write_json_atomic(out / "sanity.json", result)
    blocks = len(next(iter(correlation.values())))
    md = ["| method | " + " | ".join(f"top {k}" for k in range(1, blocks + 1)) + " |",
          "|---|" + "---:|" * blocks]  # fmt: skip
    for name, values in correlation.items():
        md.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    write_bytes_atomic(out / "sanity.md", ("\n".join(md) + "\n").encode())
    return result


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def summarize(out: Path, methods: Sequence[str], metrics: Sequence[str]) -> dict:
    """Aggregate ``records.jsonl`` into results.json, results.csv, results.md and per_block.png."""
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    present = [m for m in metrics if any(m in r["scores"].get(methods[0], {}) for r in records)]
    table = {m: {k: _mean([r["scores"][m][k] for r in records if k in r["scores"][m]]) for k in present}
             for m in methods}  # fmt: skip
    curves = {m: _curves([r["per_block"].get(m, []) for r in records]) for m in _flow_names(records)}
    summary = {
        "items": len(records),
        "accuracy": _mean([float(r["correct"]) for r in records]),
        "methods": table,
        "per_block": curves,
        "daam_per_block": curves.get("daam", {}),  # DAAM's curves, as results.json has always had them
        "higher_is_better": {k: higher_is_better(k) for k in present},
    }
    write_json_atomic(out / "results.json", summary)
    csv = ["method," + ",".join(present)] + [
        m + "," + ",".join(f"{table[m][k]:.4f}" for k in present) for m in methods
    ]
    write_bytes_atomic(out / "results.csv", ("\n".join(csv) + "\n").encode())
    arrows = [f"{k} {'↑' if higher_is_better(k) else '↓'}" for k in present]
    md = ["| method | " + " | ".join(arrows) + " |", "|---|" + "---:|" * len(present)]
    for m in methods:
        cells = []
        for k in present:
            values = [table[other][k] for other in methods]
            best = max(values) if higher_is_better(k) else min(values)
            cells.append(f"**{table[m][k]:.3f}**" if table[m][k] == best else f"{table[m][k]:.3f}")
        md.append(f"| {m} | " + " | ".join(cells) + " |")
    write_bytes_atomic(out / "results.md", ("\n".join(md) + "\n").encode())
    if any(curves.values()):
        try:
            _plot_curves(curves, out / "per_block.png")
        except ImportError:  # matplotlib is an extra: one picture less, never the run
            summary["notes"] = ["per_block.png not drawn: it needs matplotlib (pip install 'vitflow[cli]')"]
    return summary


def _flow_names(records: list[dict]) -> list[str]:
    names: list[str] = []
    for r in records:
        names += [m for m in r["per_block"] if m not in names]
    return names


def _curves(per_item: list[list[dict]]) -> dict[str, list[float | None]]:
    """``{metric: mean over items, block by block}`` from each item's per-block scores; an empty
    map (nothing accumulated yet, as before ``daam_from_K``'s block K) is scored NaN and left out
    of the mean, and a block with no map at all gets ``None``."""
    blocks = max((len(p) for p in per_item), default=0)
    keys = sorted({k for p in per_item for s in p for k in s})
    curves = {k: [_mean([p[b][k] for p in per_item if len(p) > b and k in p[b]]) for b in range(blocks)]
              for k in keys}  # fmt: skip
    return {k: [None if math.isnan(v) else v for v in values] for k, values in curves.items()}


def _nan(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _plot_curves(curves: dict[str, dict[str, list[float | None]]], path: Path) -> None:
    """``{method: {metric: curve}}``: one panel per metric, one line per method."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({k for c in curves.values() for k in c})
    if len(curves) > 1:
        cols = min(3, len(metrics))
        rows = -(-len(metrics) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.8, 3.0 * rows), constrained_layout=True,
                                 squeeze=False)  # fmt: skip
        for ax, metric in zip(axes.flat, metrics, strict=False):
            for method, by_metric in curves.items():
                if metric in by_metric:
                    values = by_metric[metric]
                    ax.plot(range(1, len(values) + 1), _nan(values), marker="o", markersize=3, label=method)
            ax.set_title(f"{metric} {'↑' if higher_is_better(metric) else '↓'}", fontsize=9)
            ax.set_xlabel("block (accumulated map after it)", fontsize=8)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="outside right center")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=130)
        plt.close(fig)
        write_bytes_atomic(path, buffer.getvalue())
        return
    ((method, single),) = curves.items()
    fig, ax = plt.subplots(figsize=(7.2, 3.6), constrained_layout=True)
    for name, values in single.items():
        arrow = "↑" if higher_is_better(name) else "↓"  # which way is better
        ax.plot(range(1, len(values) + 1), _nan(values), marker="o", label=f"{name} {arrow}")
    ax.set_xlabel(f"block (accumulated {method} map after it)")
    ax.set_ylabel("score")
    ax.set_title(f"{method} quality block by block")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # never over a curve
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
