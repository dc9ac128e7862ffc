"""Build the memory bank shipped with vitflow: the demo backbone's features of labelled scenes.

    python scripts/build_demo_bank.py       # 1600 scenes of stream seed 4, float16

The demo backbone is the demo ViT without its classifier; its features were learned with labels,
so this bank demonstrates the self-supervised code path (k-NN weights, method.md section 5)
offline, not a self-supervised training method.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vitflow.data.folders import LabelledImages, list_image_folder
from vitflow.data.scenes import CLASS_NAMES, write_scenes
from vitflow.models.demo import BANK, load_demo_backbone
from vitflow.runs.bank_build import build_bank

BANK_SEED = 4


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1600)
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "src" / "vitflow" / "assets" / BANK)
    )
    args = parser.parse_args()
    model, preprocessing = load_demo_backbone()
    with tempfile.TemporaryDirectory() as tmp:
        write_scenes(tmp, args.n, seed=BANK_SEED)
        folders = list_image_folder(Path(tmp) / "images")  # classes in folder (alphabetical) order
        labels = [CLASS_NAMES.index(folders.class_names[label]) for label in folders.labels]
        images = LabelledImages(folders.paths, labels, list(CLASS_NAMES))  # the model's class order
        bank = build_bank(
            model, preprocessing, images, args.out, preprocessing_config=preprocessing.config, half=True,
            batch_size=100,
        )  # fmt: skip
    bank.metadata["source"] = f"vitflow.data.scenes seed {BANK_SEED}, scenes 0..{args.n - 1}"
    bank.save(args.out)
    print(f"wrote {args.out}: {len(bank)} x {bank.dim} float16, {bank.num_classes} classes")


if __name__ == "__main__":
    main()
