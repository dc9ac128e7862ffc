"""Make the README's pictures from the bundled demo ViT (no cherry-picking: scenes 0..3 of the
test stream, seed 3, which the model never saw).

    python scripts/make_readme_figures.py      # writes docs/flow.gif, docs/flow_strip.png, docs/figure.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitflow import DAAM
from vitflow.atomic import write_bytes_atomic
from vitflow.data.scenes import CLASS_NAMES, generate_scene
from vitflow.models.demo import load_demo_model
from vitflow.render import encode_gif, label_frame, overlay, to_uint8
from vitflow.render.figure import flow_figure, save_figure

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> None:
    model, preprocessing = load_demo_model()
    scenes = [generate_scene(3, i) for i in range(4)]
    x = torch.stack([preprocessing(Image.fromarray(s.image)) for s in scenes])
    with DAAM(model) as daam:
        result = daam(x)
    rows, frames = [], []
    for i, scene in enumerate(scenes):
        image = scene.image  # overlays on the full-resolution scene
        heat = to_uint8(result.maps[i], size=image.shape[:2], mode="sigmoid")
        rows.append(np.concatenate([image] + [overlay(image, h) for h in heat], axis=1))
        if i == 0:
            name = CLASS_NAMES[int(result.target[i])]
            frames = [
                label_frame(overlay(image, h), f"block {b + 1}/{len(heat)}  {name}")
                for b, h in enumerate(heat)
            ]
    DOCS.mkdir(exist_ok=True)
    write_bytes_atomic(DOCS / "flow.gif", encode_gif(frames, duration_ms=500))
    first = scenes[0].image
    fig = flow_figure(first, result.maps[0], result.block_maps[0], mode="global",
                      title=f"demo ViT: {CLASS_NAMES[int(result.target[0])]} (held-out scene)")  # fmt: skip
    save_figure(fig, DOCS / "figure", formats=("png",), dpi=110)
    strip = Image.fromarray(np.concatenate(rows, axis=0))
    strip = strip.resize((strip.width // 2, strip.height // 2), Image.Resampling.LANCZOS)
    strip.save(DOCS / "flow_strip.png", optimize=True)
    truth = [CLASS_NAMES[s.label] for s in scenes]
    predicted = [CLASS_NAMES[int(t)] for t in result.target]
    print(f"scenes: {truth}\npredicted: {predicted}\nwrote {DOCS / 'flow.gif'} and {DOCS / 'flow_strip.png'}")


if __name__ == "__main__":
    main()
