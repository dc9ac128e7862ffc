"""``vitflow evaluate``: every method and metric on a labelled dataset with object masks, in
batches, resumable, with DAAM's per-block curves.

Data: a scenes folder (``images/<class>/*.png`` + ``boxes.json`` with mask files, as written by
``vitflow scenes``) or any ImageFolder tree (then only mask-free metrics run). Each batch's
per-image records are appended to ``OUT/records.jsonl``; a rerun skips images already there.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitflow.adapters import resolve_adapter
from vitflow.baselines import (
    attention_gradcam,
    attention_rollout,
    generic_attention,
    gradcam_tokens,
    input_x_gradient,
    raw_attention,
    trace_attention,
)
from vitflow.core.daam import accumulate
from vitflow.data.images import load_image
from vitflow.data.preprocess import Preprocessing
from vitflow.engine import DAAM
from vitflow.files import write_bytes_atomic, write_json_atomic
from vitflow.metrics import (
    cascading_randomization,
    confidence_change,
    deletion_insertion,
    energy_pointing_game,
    perturbation_test,
    pointing_game,
    segmentation_scores,
)

METHODS = (
    "daam", "daam_last_block", "daam_block_norm", "raw_attention", "rollout", "attention_gradcam",
    "generic_attention", "gradcam", "input_x_gradient",
)  # fmt: skip
MASK_METRICS = ("pointing_game", "energy", "pixel_accuracy", "miou", "ap")
MODEL_METRICS = ("perturbation_pos", "perturbation_neg", "deletion", "insertion", "average_drop", "increase")
METRICS = MASK_METRICS + MODEL_METRICS
PER_BLOCK_METRICS = MASK_METRICS + ("perturbation_pos", "insertion")
# direction of "better" for the summary table
HIGHER_IS_BETTER = {m: True for m in METRICS} | {
    "perturbation_pos": False,
    "deletion": False,
    "average_drop": False,
}


@dataclass(frozen=True)
class Item:
    path: Path
    target: int
    mask: np.ndarray | None  # (H, W) bool at the image's size, or None
    name: str


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
                mask = np.asarray(Image.open(data / obj["mask"])) > 0
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
            mask = boxes_mask(xml)
        items.append(Item(path, label, mask, path.stem))
    return items


def _mask_at(mask: np.ndarray, preprocess) -> torch.Tensor:
    """A mask through the same geometry as its image (resize, crop): the preprocessing applied to
    the mask drawn as a black-and-white image, then thresholded at half."""
    picture = Image.fromarray(np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2))
    return torch.from_numpy(preprocess.to_image(preprocess(picture))[..., 0] > 127)


def _inputs(batch: Sequence[Item], preprocess: Preprocessing, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The preprocessed images and their target classes, on ``device``."""
    x = torch.stack([preprocess(load_image(item.path)) for item in batch]).to(device)
    return x, torch.tensor([item.target for item in batch], device=device)


def explain_all(model: nn.Module, x: torch.Tensor, target: torch.Tensor, methods: Sequence[str]) -> dict:
    """Maps of every method for a batch: ``(B, h, w)`` (or ``(B, H, W)``), plus ``"daam_blocks"``
    ``(B, L, h, w)`` (the accumulated map after each block) when DAAM is among them."""
    maps: dict[str, torch.Tensor] = {}
    variants = [m for m in methods if m.startswith("daam")]
    if variants:
        # every DAAM variant differs only in how the same block maps are accumulated: one pass
        with DAAM(model) as daam:
            result = daam(x, target=target)
        maps["daam"], maps["daam_last_block"] = result.final, result.block_maps[:, -1]
        maps["daam_blocks"] = result.maps
        if "daam_block_norm" in methods:
            maps["daam_block_norm"] = accumulate(result.block_maps, normalize_blocks=True)[:, -1]
        for name in variants:
            if name.startswith("daam_from_"):  # accumulation from a chosen block: daam_from_4
                start_block = int(name.removeprefix("daam_from_"))
                maps[name] = accumulate(result.block_maps, start_block=start_block)[:, -1]
    attention_methods = {
        "raw_attention",
        "rollout",
        "attention_gradcam",
        "generic_attention",
        "input_x_gradient",
    }
    if attention_methods & set(methods):
        trace = trace_attention(model, x, target=target, input_grad="input_x_gradient" in methods)
        builders: dict[str, Callable] = {
            "raw_attention": raw_attention,
            "rollout": attention_rollout,
            "attention_gradcam": attention_gradcam,
            "generic_attention": generic_attention,
            "input_x_gradient": lambda t: input_x_gradient(x, t).clamp_min(0),
        }
        for name in attention_methods & set(methods):
            maps[name] = builders[name](trace)
    if "gradcam" in methods:
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            raise ValueError(
                f"gradcam needs a timm model (blocks[-1].norm1 as target layer), got {type(model).__name__}"
            )
        adapter = resolve_adapter(model)
        prefix, grid = adapter.prefix_tokens(), adapter.grid(tuple(x.shape[-2:]))
        maps["gradcam"] = gradcam_tokens(model, x, target, blocks[-1].norm1, prefix, grid)
    return {name: m.float() for name, m in maps.items() if name in methods or name == "daam_blocks"}


def score_maps(model, x, target, maps, masks, metrics) -> dict[str, torch.Tensor]:
    """Every requested metric for one method's ``(B, h, w)`` maps: ``{metric: (B,)}``."""
    out: dict[str, torch.Tensor] = {}
    if masks is not None:
        if "pointing_game" in metrics:
            out["pointing_game"] = pointing_game(maps, masks).double()
        if "energy" in metrics:
            out["energy"] = energy_pointing_game(maps, masks).double()
        if {"pixel_accuracy", "miou", "ap"} & set(metrics):
            seg = segmentation_scores(maps, masks)
            out |= {k: v.double() for k, v in seg.items() if k in metrics}
    if "perturbation_pos" in metrics:
        out["perturbation_pos"] = perturbation_test(model, x, maps, target)["auc_accuracy"]
    if "perturbation_neg" in metrics:
        out["perturbation_neg"] = perturbation_test(model, x, maps, target, positive=False)["auc_accuracy"]
    if {"deletion", "insertion"} & set(metrics):
        curves = deletion_insertion(model, x, maps, target)
        out |= {k: curves[f"{k}_auc"] for k in ("deletion", "insertion") if k in metrics}
    if {"average_drop", "increase"} & set(metrics):
        change = confidence_change(model, x, maps, target)
        out |= {"average_drop": 100 * change["drop"], "increase": 100 * change["increase"].double()}
    return {k: v.cpu() for k, v in out.items() if k in metrics}


def evaluate(
    model: nn.Module,
    preprocess: Preprocessing,
    items: Sequence[Item],
    out: str | Path,
    methods: Sequence[str] = METHODS,
    metrics: Sequence[str] = METRICS,
    per_block_metrics: Sequence[str] = PER_BLOCK_METRICS,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress=None,
) -> dict:
    """Run every method and metric over ``items``; append per-image records to ``out/records.jsonl``
    (skipping items already recorded) and return the summary (also written as results.*)."""
    unknown = [m for m in methods if m not in METHODS and not re.fullmatch(r"daam_from_\d+", m)]
    unknown += [m for m in [*metrics, *per_block_metrics] if m not in METRICS]
    if unknown:
        raise ValueError(
            f"unknown methods/metrics {unknown}; methods: {', '.join(METHODS)}; metrics: {', '.join(METRICS)}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records_file = out / "records.jsonl"
    done = set()
    if records_file.exists():
        for line in records_file.read_text().splitlines():
            done.add(json.loads(line)["item"])
    todo = [item for item in items if item.name not in done]
    if progress is not None:
        progress.update(len(items) - len(todo))
    model = model.eval().to(device)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        x, target = _inputs(batch, preprocess, device)
        masks = None
        if all(item.mask is not None for item in batch):
            masks = torch.stack([_mask_at(item.mask, preprocess) for item in batch]).to(device)
        maps = explain_all(model, x, target, methods)
        with torch.no_grad():
            correct = (model(x).argmax(1) == target).cpu()
        scores = {m: score_maps(model, x, target, maps[m], masks, metrics) for m in methods}
        blocks = maps.get("daam_blocks")
        per_block = []
        if blocks is not None:
            for b in range(blocks.shape[1]):
                per_block.append(score_maps(model, x, target, blocks[:, b], masks, per_block_metrics))
        lines = []
        for i, item in enumerate(batch):
            record = {
                "item": item.name,
                "target": item.target,
                "correct": bool(correct[i]),
                "scores": {m: {k: float(v[i]) for k, v in s.items()} for m, s in scores.items()},
                "daam_per_block": [{k: float(v[i]) for k, v in s.items()} for s in per_block],
            }
            lines.append(json.dumps(record))
        with open(records_file, "a") as handle:  # one append per batch: an interrupted run loses one batch
            handle.write("\n".join(lines) + "\n")
        if progress is not None:
            progress.update(len(batch))
    return summarize(out, methods, metrics)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks in order, whatever the family: the ``ModuleList`` or
    ``Sequential`` whose i-th entry contains the i-th attention site the adapter explains (for
    CaiT: its class-attention blocks)."""
    attentions = [site.module for site in resolve_adapter(model).sites()]
    for candidate in model.modules():
        if isinstance(candidate, (nn.ModuleList, nn.Sequential)) and len(candidate) == len(attentions):
            pairs = zip(candidate, attentions, strict=True)
            if all(any(m is a for m in block.modules()) for block, a in pairs):
                return list(candidate)
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__} (no ModuleList or Sequential "
        "holding its attention modules in order); the sanity check needs them"
    )


def sanity_check(
    model: nn.Module,
    preprocess: Preprocessing,
    items: Sequence[Item],
    out: str | Path,
    methods: Sequence[str] = METHODS,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict:
    """Cascading randomisation (Adebayo et al. 2018) for every method on ``items``, each explained
    for its true class: the mean Spearman rank correlation between a method's map of the trained
    model and its map after re-initialising the top ``k`` blocks, ``k = 1..L``. All methods see the
    same randomised models. Writes ``OUT/sanity.json`` and ``OUT/sanity.md``; returns the dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().to(device)
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(items), batch_size):
        x, target = _inputs(items[start : start + batch_size], preprocess, device)

        def explain(m: nn.Module, x=x, target=target) -> dict[str, torch.Tensor]:
            maps = explain_all(m, x, target, methods)
            return {name: maps[name] for name in methods}

        rows = cascading_randomization(model, explain, transformer_blocks, seed=seed)
        for name, row in rows.items():
            sums[name] = sums.get(name, 0) + row.double().sum(dim=1).cpu()
    correlation = {name: (total / len(items)).tolist() for name, total in sums.items()}
    result = {"items": len(items), "seed": seed, "spearman_after_top_k_randomised": correlation}
    write_json_atomic(out / "sanity.json", result)
    blocks = len(next(iter(correlation.values())))
    md = ["| method | " + " | ".join(f"top {k}" for k in range(1, blocks + 1)) + " |",
          "|---|" + "---:|" * blocks]  # fmt: skip
    for name, values in correlation.items():
        md.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    write_bytes_atomic(out / "sanity.md", ("\n".join(md) + "\n").encode())
    return result


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def summarize(out: Path, methods: Sequence[str], metrics: Sequence[str]) -> dict:
    """Aggregate ``records.jsonl`` into results.json, results.csv, results.md and per_block.png."""
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    present = [m for m in metrics if any(m in r["scores"].get(methods[0], {}) for r in records)]
    table = {m: {k: _mean([r["scores"][m][k] for r in records if k in r["scores"][m]]) for k in present}
             for m in methods}  # fmt: skip
    blocks = max((len(r["daam_per_block"]) for r in records), default=0)
    block_keys = sorted({k for r in records for s in r["daam_per_block"] for k in s})
    curves = {k: [_mean([r["daam_per_block"][b][k] for r in records if len(r["daam_per_block"]) > b])
                  for b in range(blocks)] for k in block_keys}  # fmt: skip
    summary = {
        "items": len(records),
        "accuracy": _mean([float(r["correct"]) for r in records]),
        "methods": table,
        "daam_per_block": curves,
        "higher_is_better": {k: HIGHER_IS_BETTER[k] for k in present},
    }
    write_json_atomic(out / "results.json", summary)
    csv = ["method," + ",".join(present)] + [
        m + "," + ",".join(f"{table[m][k]:.4f}" for k in present) for m in methods
    ]
    write_bytes_atomic(out / "results.csv", ("\n".join(csv) + "\n").encode())
    arrows = [f"{k} {'↑' if HIGHER_IS_BETTER[k] else '↓'}" for k in present]
    md = ["| method | " + " | ".join(arrows) + " |", "|---|" + "---:|" * len(present)]
    for m in methods:
        cells = []
        for k in present:
            values = [table[other][k] for other in methods]
            best = max(values) if HIGHER_IS_BETTER[k] else min(values)
            cells.append(f"**{table[m][k]:.3f}**" if table[m][k] == best else f"{table[m][k]:.3f}")
        md.append(f"| {m} | " + " | ".join(cells) + " |")
    write_bytes_atomic(out / "results.md", ("\n".join(md) + "\n").encode())
    if curves:
        _plot_curves(curves, out / "per_block.png")
    return summary


def _plot_curves(curves: dict[str, list[float]], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 3.6), constrained_layout=True)
    for name, values in curves.items():
        arrow = "↑" if HIGHER_IS_BETTER.get(name, True) else "↓"  # which way is better
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{name} {arrow}")
    ax.set_xlabel("block (accumulated DAAM map after it)")
    ax.set_ylabel("score")
    ax.set_title("DAAM quality block by block")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # never over a curve
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
