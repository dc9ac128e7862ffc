"""The figures the demo model's tests check, printed exactly (the tests assert thresholds).

python scripts/evaluate_demo.py           # 200 single-object and 60 two-object test scenes (seed 3)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from vitflow import DAAM, KNNTarget
from vitflow.data.scenes import generate_scene
from vitflow.metrics import energy_pointing_game, pointing_game, segmentation_scores
from vitflow.models.demo import load_demo_backbone, load_demo_bank, load_demo_model

TEST_SEED = 3


def batch(scenes, preprocessing):
    return torch.stack([preprocessing(Image.fromarray(s.image)) for s in scenes])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=60)
    args = parser.parse_args()
    model, preprocessing = load_demo_model()
    scenes = [generate_scene(TEST_SEED, i) for i in range(args.single)]
    x = batch(scenes, preprocessing)
    labels = torch.tensor([s.label for s in scenes])
    masks = torch.from_numpy(np.stack([s.masks[0] for s in scenes]))
    with DAAM(model) as daam:
        results = [daam(x[i : i + 50]) for i in range(0, len(x), 50)]
    predicted = torch.cat([r.target for r in results])
    finals = torch.cat([r.final for r in results])
    print(f"single-object scenes (seed {TEST_SEED}, n={args.single}):")
    print(f"  accuracy                         {float((predicted == labels).float().mean()):.3f}")
    print(f"  DAAM maximum inside the object   {float(pointing_game(finals, masks).float().mean()):.3f}")
    print(f"  DAAM energy inside the object    {float(energy_pointing_game(finals, masks).mean()):.3f}"
          f"   (object area {float(masks.float().mean()):.3f} of the image)")  # fmt: skip
    seg = segmentation_scores(finals, masks)
    print(f"  segmentation pixel acc / mIoU / AP  {float(seg['pixel_accuracy'].mean()):.3f} / "
          f"{float(seg['miou'].mean()):.3f} / {float(seg['ap'].mean()):.3f}")  # fmt: skip

    pairs = [generate_scene(TEST_SEED, i, objects=2) for i in range(args.pairs)]
    xp = batch(pairs, preprocessing)
    hits, misses = [], []
    with DAAM(model) as daam:
        for k in (0, 1):
            result = daam(xp, target=[int(s.labels[k]) for s in pairs])
            hits.append(pointing_game(result.final, torch.from_numpy(np.stack([s.masks[k] for s in pairs]))))
            misses.append(
                pointing_game(result.final, torch.from_numpy(np.stack([s.masks[1 - k] for s in pairs])))
            )
    print(f"two-object scenes (n={args.pairs}, each class explained): maximum on the requested object "
          f"{float(torch.cat(hits).float().mean()):.3f}, on the other object "
          f"{float(torch.cat(misses).float().mean()):.3f}")  # fmt: skip

    backbone, _ = load_demo_backbone()
    bank = load_demo_bank()
    with DAAM(backbone) as daam:
        knn = daam(x[:100], target=KNNTarget(bank))
    print(f"k-NN mode (bundled bank, {len(bank)} entries, first 100 scenes): accuracy "
          f"{float((knn.target == labels[:100]).float().mean()):.3f}, maximum inside the object "
          f"{float(pointing_game(knn.final, masks[:100]).float().mean()):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
