"""``vitflow evaluate --protocol chefer``: Chefer, Gur & Wolf (CVPR 2021), "Transformer
Interpretability Beyond Attention Visualization", computed as their published evaluation code
computes it (``baselines/ViT/imagenet_seg_eval.py``, ``utils/metrices.py``,
``baselines/ViT/pertubation_eval_from_hdf5.py``), so numbers sit beside their Tables 1 and 2.

Both tests explain the model's predicted class (their default, ``--vis-class top``).

Segmentation (ImageNet-segmentation, ``gtsegs_ijcv.mat``; Table 2):
  image resized to the model's input size without a crop, the model's normalisation; mask resized
  with nearest neighbour; the map upsampled bilinearly to the input, min-max normalised per image,
  binarised at its mean (``> mean`` is foreground). Pixel accuracy and the per-class IoU are
  **summed over the dataset** (correct pixels / all pixels; intersection / union per class, then
  the mean of background and foreground IoU); AP is per image over the foreground *and*
  background channels together (the map for the foreground, one minus it for the background),
  then averaged.

Perturbation (an ImageFolder tree, e.g. ImageNet val; Table 1):
  the upsampled, min-max normalised map ranks the input's pixels; 10%, 20% ... 90% of them are
  set to black (zero before normalisation), most relevant first (positive) or least relevant
  first (negative). At each step, top-1 accuracy against the true label; step 0 is the model's
  accuracy on the intact images. ``AUC = trapz(accuracy, [0, 0.1, ..., 0.9]) * 100``: integrated,
  not divided by the range (0.9), as in their paper (github issue #31 of their repository).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from vitflow.atomic import write_bytes_atomic, write_json_atomic
from vitflow.data.gtsegs import GtSegs
from vitflow.data.images import ImageLoadError, read_image
from vitflow.data.loader import batches
from vitflow.data.preprocess import Preprocessing
from vitflow.metrics.protocol import STEPS, auc, normalised_maps, perturbation_hits, segmentation_counts
from vitflow.runs.distributed import SINGLE, ChunkedRun, Group, Ledger, describer, run_chunks

# -- data ------------------------------------------------------------------------------------------


def resize_preprocessing(preprocessing: Preprocessing) -> Preprocessing:
    """Their input transform: ``Resize((S, S))`` (bilinear, antialiased) without a crop, then the
    model's normalisation. ``S``: the model's input size."""
    import torchvision.transforms as T

    size = tuple(preprocessing.config.get("input_size", (3, 224, 224))[-2:])
    transform = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize(preprocessing.mean, preprocessing.std)])
    config = {**preprocessing.config, "crop_pct": 1.0, "protocol": "chefer"}
    return Preprocessing(transform, preprocessing.mean, preprocessing.std, config)


@dataclass(frozen=True)
class Source:
    """What the protocol reads: a ``gtsegs_ijcv.mat`` file (masks, no labels) or labelled image
    files (labels, no masks)."""

    names: list[str]
    labels: list[int]  # -1 where unknown
    segs: GtSegs | None = None
    paths: list[Path] | None = None

    @classmethod
    def open(cls, data: str | Path) -> Source:
        from vitflow.data.gtsegs import is_gtsegs

        if is_gtsegs(data):
            segs = GtSegs(data)
            return cls([f"{i:05d}" for i in range(len(segs))], [-1] * len(segs), segs=segs)
        from vitflow.data.folders import list_labelled_images

        images = list_labelled_images(data)
        names = [
            str(p.relative_to(Path(data))) if p.is_relative_to(Path(data)) else str(p) for p in images.paths
        ]
        return cls(names, list(images.labels), paths=list(images.paths))


class _Samples(Dataset):
    """Item ``i`` as ``vitflow.data.loader.collate`` expects; the extra is the mask resized
    with nearest neighbour to the input size (gtsegs only)."""

    def __init__(self, source: Source, preprocessing: Preprocessing) -> None:
        self.source, self.preprocessing = source, preprocessing
        self.size = tuple(preprocessing.config.get("input_size", (3, 224, 224))[-2:])

    def __len__(self) -> int:
        return len(self.source.names)

    def __getitem__(self, index: int):
        source = self.source
        try:
            if source.segs is not None:
                image = source.segs.image(index)
                drawn = Image.fromarray(source.segs.mask(index).astype(np.uint8))
                resized = drawn.resize(self.size[::-1], Image.Resampling.NEAREST)
                mask = torch.from_numpy(np.asarray(resized) > 0)
                return index, self.preprocessing(image), [], mask, None
            assert source.paths is not None  # a Source has masks or paths
            loaded = read_image(source.paths[index])
            return index, self.preprocessing(loaded.image), loaded.notes, None, None
        except ImageLoadError as error:
            return index, None, [], None, str(error)
        except Exception as error:  # noqa: BLE001 - a damaged entry of the .mat file is one failed item
            return (
                index,
                None,
                [],
                None,
                f"{source.names[index]}: unreadable ({type(error).__name__}: {error})",
            )


# -- the run ---------------------------------------------------------------------------------------


def evaluate_chefer(
    model: nn.Module,
    preprocessing: Preprocessing,
    data: str | Path,
    out: str | Path,
    methods: Sequence[str],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress=None,
    on_error: Callable[[str], None] | None = None,
    chunk_items: int = 256,
    workers: int = 0,
    group: Group = SINGLE,
    limit: int | None = None,
) -> dict:
    """Run the protocol for every method over ``data``; write ``OUT/records.jsonl`` (per-image
    counts and hits), ``results.json`` and ``results.md``; return the summary. Resumable by chunk
    and shared across ``torchrun`` ranks like ``vitflow.runs.evaluate.evaluate``."""
    from vitflow.adapters import model_identity, resolve_adapter
    from vitflow.methods.run import applicable_methods, check_names

    check_names(methods, [])
    out = Path(out)
    if group.is_main:
        out.mkdir(parents=True, exist_ok=True)
    model = model.eval().to(device)
    adapter = resolve_adapter(model)
    methods, notes = applicable_methods(adapter, list(methods))
    source = Source.open(data)
    count = len(source.names) if limit is None else min(limit, len(source.names))
    pre = resize_preprocessing(preprocessing)
    black = (torch.zeros(3) - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    state = {"protocol": "chefer", "model": model_identity(model), "methods": methods, "data": str(data)}
    run = ChunkedRun.open(
        count, batch_size, chunk_items, out / "chunks", state,
        lambda i: f"{source.names[i]}\t{source.labels[i]}", group,
        strict=True, what="evaluate --protocol chefer", suffix=".json",
    )  # fmt: skip
    plan, ledger, todo = run.plan, run.ledger, run.todo
    if progress is not None:
        progress.skip(run.items_done())
    dataset = _Samples(source, pre)
    device = torch.device(device)
    loaded = iter(batches(dataset, run.my_batches(), workers, device.type == "cuda"))
    report = on_error or (lambda message: None)

    def run_chunk(chunk: int) -> int:
        records, failures = [], []
        for _ in plan[chunk]:
            batch = next(loaded)
            for _, message in batch.errors:
                failures.append(message)
                report(message)
            if progress is not None:
                progress.update(len(batch.errors))
            if batch.x is None:
                continue
            records += _score(adapter, batch, source, methods, black, device)
            if progress is not None:
                progress.update(len(batch.indices))
        write_json_atomic(ledger.path(chunk, ".json"), {"records": records, "failures": failures})
        return sum(len(b) for b in plan[chunk])

    run_chunks(group, todo, run_chunk, describer(plan, "items", lambda i: source.names[i]),
               progress.update if progress is not None else None)  # fmt: skip
    summary = None
    if group.is_main:
        ledger.prune(".json")
        summary = _summarize(out, ledger, len(plan), methods, count)
        if summary is not None:
            summary["notes"] = notes
    summary = group.first(summary)
    if summary is None:
        raise ValueError(f"none of the {count} items could be evaluated (no image could be read)")
    return summary


def _score(adapter, batch, source: Source, methods: list[str], black: torch.Tensor, device) -> list[dict]:
    from vitflow.methods.run import explain_all

    x = batch.x.to(device, non_blocking=True)
    labels = torch.tensor([source.labels[i] for i in batch.indices], device=device)
    with torch.no_grad():
        predicted = adapter.forward(x).argmax(1)
    maps = explain_all(adapter, x, predicted, methods)
    masks = torch.stack(batch.extras).to(device) if all(m is not None for m in batch.extras) else None
    has_labels = bool((labels >= 0).all())
    records = [{"item": source.names[i], "label": source.labels[i], "predicted": int(predicted[k]),
                "methods": {}} for k, i in enumerate(batch.indices)]  # fmt: skip
    for name in methods:
        unit = normalised_maps(maps[name], tuple(x.shape[-2:]))
        per_image: list[dict] = [{} for _ in batch.indices]
        if masks is not None:
            counts = segmentation_counts(unit, masks)
            for k, entry in enumerate(per_image):
                entry.update({key: value[k].tolist() for key, value in counts.items()})
        if has_labels:
            for sign, positive in (("positive", True), ("negative", False)):
                hits = perturbation_hits(
                    adapter.forward, x, unit, labels, black, positive, intact=predicted == labels
                )
                for k, entry in enumerate(per_image):
                    entry[sign] = hits[k].int().tolist()
        for record, entry in zip(records, per_image, strict=True):
            record["methods"][name] = entry
    return records


def _summarize(out: Path, ledger: Ledger, chunks: int, methods: list[str], total: int) -> dict | None:
    """Join the chunks into ``records.jsonl`` (as ``vitflow.runs.evaluate.evaluate`` does) and
    aggregate as their code does."""
    joined = ledger.join_records(out / "records.jsonl")
    if joined is None:
        return None
    failed = joined["failed"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    table: dict[str, dict] = {}
    for name in methods:
        rows = [r["methods"][name] for r in records]
        entry: dict = {}
        if "correct" in rows[0]:
            correct, labeled = sum(r["correct"] for r in rows), sum(r["labeled"] for r in rows)
            inter = np.sum([r["inter"] for r in rows], axis=0, dtype=np.float64)
            union = np.sum([r["union"] for r in rows], axis=0, dtype=np.float64)
            iou = inter / (np.spacing(1) + union)
            entry.update({"pixel_accuracy": correct / (np.spacing(1) + labeled), "iou_background": iou[0],
                          "iou_foreground": iou[1], "miou": float(iou.mean()),
                          "map": float(np.mean([r["ap"] for r in rows]))})  # fmt: skip
        for sign in ("positive", "negative"):
            if sign in rows[0]:
                accuracy = np.mean([r[sign] for r in rows], axis=0)
                entry[f"{sign}_accuracy"] = accuracy.tolist()
                entry[f"{sign}_auc"] = auc(accuracy)
        table[name] = {k: (float(v) if not isinstance(v, list) else v) for k, v in entry.items()}
    summary = {"protocol": "chefer", "items": len(records), "failed": failed, "total": total,
               "accuracy": _accuracy(records), "methods": table, "steps": [0.0, *STEPS]}  # fmt: skip
    write_json_atomic(out / "results.json", summary)
    write_bytes_atomic(out / "results.md", _markdown(table).encode())
    return summary


def _accuracy(records: list[dict]) -> float | None:
    labelled = [r for r in records if r["label"] >= 0]
    return sum(r["predicted"] == r["label"] for r in labelled) / len(labelled) if labelled else None


_COLUMNS = [("pixel_accuracy", "pixel acc. ↑", 100), ("miou", "mIoU ↑", 100), ("map", "mAP ↑", 100),
            ("positive_auc", "positive AUC ↓", 1), ("negative_auc", "negative AUC ↑", 1)]  # fmt: skip


def _markdown(table: dict[str, dict]) -> str:
    """Their units: percentages for segmentation (Table 2), AUC x 100 for perturbation (Table 1)."""
    present = [c for c in _COLUMNS if any(c[0] in row for row in table.values())]
    lines = ["| method | " + " | ".join(title for _, title, _ in present) + " |",
             "|---|" + "---:|" * len(present)]  # fmt: skip
    for name, row in table.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{row[key] * scale:.2f}" for key, _, scale in present) + " |"
        )
    return "\n".join(lines) + "\n"
