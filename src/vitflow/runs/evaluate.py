"""``vitflow evaluate``: every method and metric on a labelled dataset with object masks, in
batches, resumable, with DAAM's per-block curves.

Data: a scenes folder (``images/<class>/*.png`` + ``boxes.json`` with mask files, as written by
``vitflow scenes``) or any ImageFolder tree (then only mask-free metrics run). Items are cut into
chunks of whole batches (``vitflow.runs.distributed``); each finished chunk's per-image records are
written atomically to ``OUT/chunks/``, so a rerun (with any number of ranks) skips them. Rank 0
joins them into ``OUT/records.jsonl`` in item order, then the summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitflow.adapters import Adapter, model_identity, resolve_adapter
from vitflow.atomic import write_bytes_atomic, write_json_atomic
from vitflow.data.items import Item, load_mask, mask_at
from vitflow.data.loader import ImageFiles, batches
from vitflow.data.preprocess import Preprocessing
from vitflow.methods.run import applicable_methods, check_flow_methods, check_names, explain_all, method_names
from vitflow.metrics import ScoringContext, cascading_randomization
from vitflow.metrics.run import default_per_block_metrics, metric_names, score_maps
from vitflow.outputs.maps import SavedMaps
from vitflow.runs.distributed import SINGLE, ChunkedRun, Group, describer, run_chunks
from vitflow.runs.report import summarize


class _MaskAt:
    """The ``extra`` of an evaluation's ``ImageFiles``: item ``i``'s
    mask through its image's preprocessing, read in the decoding worker (picklable)."""

    def __init__(self, items: Sequence[Item], preprocess: Preprocessing) -> None:
        self.items, self.preprocess = items, preprocess

    def __call__(self, index: int, image) -> torch.Tensor | None:
        mask = load_mask(self.items[index].mask)
        return None if mask is None else mask_at(mask, self.preprocess)


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
    """``_Inputs`` for each batch of ``plan`` (index lists into ``items``), in order, decoded
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
        extras = [m for m in batch.extras if m is not None]
        if len(extras) == len(batch.extras):
            masks = torch.stack(extras).to(device)
        yield _Inputs(chosen, batch.x.to(device, non_blocking=True), target, masks, errors)


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
    on_note: Callable[[str], None] | None = None,
) -> dict:
    """Run every method and metric over ``items``; write per-image records to ``out/records.jsonl``
    and return the summary (also written as results.*).

    Methods and metrics are names in ``METHODS`` / ``METRICS`` (default:
    all; per-block: those registered with ``per_block=True``). Images that cannot be read are
    reported through ``on_error`` (one line each), left out, and counted in ``summary["failed"]``.
    Items go in batches of ``batch_size``, ``chunk_items`` to a resumable chunk (rounded up to
    whole batches); under ``torchrun`` each rank (``group``) takes its share of the chunks and the
    records are those of one process. ``workers``: ``DataLoader`` processes decoding images.
    ``saved``: maps saved by ``vitflow explain --save-maps`` (``vitflow.load_maps``), scored
    as one more method, ``saved``, without running the model for them: each item gets the saved
    final map of its image (for the class it was made for). ``per_block_methods``: the methods
    whose map after every block is scored by ``per_block_metrics`` (default: those of ``metrics``
    that can be) (DAAM and its variants that make an attention flow; default: DAAM when it is
    among ``methods``).
    """
    methods = list(methods or method_names())
    metrics = list(metrics or metric_names())
    if per_block_metrics is None:  # the chosen metrics that can score every block's map
        per_block_metrics = default_per_block_metrics(metrics)
    per_block_metrics = list(per_block_metrics)
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
    if on_note is not None and group.is_main:  # what the run will compute, once it is accepted
        on_note(_plan(len(items), methods, metrics, per_block_metrics, per_block_methods))
    for note in ledger.notes:  # damaged files of an earlier run, redone
        if on_note is not None:
            on_note(note)
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
        summary = ledger.join_records(out / "records.jsonl")
        if summary is not None:
            summary.update(summarize(out, methods + (["saved"] if saved is not None else []), metrics))
            summary["notes"] = notes + summary.get("notes", [])
    summary = group.first(summary)
    if summary is None:
        raise ValueError(f"none of the {len(items)} items could be evaluated (no image could be read)")
    return summary


def _plan(items: int, methods: list[str], metrics: list[str], per_block: list[str], flow: list[str]) -> str:
    """What a run will compute, said before it starts."""
    line = f"evaluate: {items} items; {', '.join(methods)}; scored by {', '.join(metrics)}"
    if per_block and flow:
        return f"{line}; after every block, {', '.join(flow)} by {', '.join(per_block)}"
    return f"{line}; no per-block metrics"


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
    assert x is not None and target is not None  # batches of readable items only
    maps = explain_all(adapter, x, target, methods)
    if saved is not None:
        maps["saved"] = saved
        methods = [*methods, "saved"]
    with torch.no_grad():
        correct = adapter.forward(x).argmax(1).eq(target).cpu()
    context = ScoringContext(adapter.forward, x, target, batch.masks)
    scores = {m: score_maps(context, maps[m], metrics) for m in methods}
    per_block: dict[str, list[dict[str, torch.Tensor]]] = {}
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
            "scores": {m: _item_scores(s, i) for m, s in scores.items()},
            "per_block": {m: [_item_scores(s, i) for s in ss] for m, ss in per_block.items()},
        }
        for i, item in enumerate(batch.items)
    ]


def _item_scores(scores: dict[str, torch.Tensor], i: int) -> dict[str, float | None]:
    """One item's scores; ``None`` where a metric has no value (a per-block map still empty, SaCo
    of a constant map): JSON has no NaN, and the means leave them out."""
    return {k: None if math.isnan(float(v[i])) else float(v[i]) for k, v in scores.items()}


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
        assert target is not None  # a readable batch has both

        def explain(m: nn.Module, x=x, target=target) -> dict[str, torch.Tensor]:
            maps = explain_all(adapter_for(m), x, target, methods)
            return {name: maps[name] for name in methods}

        rows = cascading_randomization(adapter.model, explain, lambda m: adapter_for(m).blocks(), seed=seed)
        assert isinstance(rows, dict)  # explain returns a dict of maps
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

