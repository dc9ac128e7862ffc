"""`vitflow evaluate`: every method and metric over a scenes folder, resumable, with outputs."""

import json

import timm
import torch
from safetensors.torch import save_file

from vitflow.cli import main

METRICS = "pointing_game,energy,ap,perturbation_pos"


def test_evaluate_writes_results_and_resumes(tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    assert main(["scenes", "--out", str(tmp_path / "scenes"), "--n", "2", "--seed", "1", "--size", "96",
                 "--objects", "2"]) == 0  # fmt: skip
    args = ["evaluate", "--model", "test_vit", "--checkpoint", str(tmp_path / "w.safetensors"), "--data",
            str(tmp_path / "scenes"), "--out", str(tmp_path / "eval"), "--batch-size", "2", "--quiet",
            "--methods", "daam,daam_from_3,rollout,generic_attention", "--metrics", METRICS]  # fmt: skip
    assert main([*args, "--limit", "2"]) == 0
    records = (tmp_path / "eval" / "records.jsonl").read_text().splitlines()
    assert len(records) == 2
    first = json.loads(records[0])
    assert set(first["scores"]) == {"daam", "daam_from_3", "rollout", "generic_attention"}
    assert set(first["scores"]["daam"]) == {"pointing_game", "energy", "ap", "perturbation_pos"}
    assert len(first["per_block"]["daam"]) == 6  # test_vit has 6 blocks
    assert main([*args, "--sanity", "2"]) == 0  # a larger --limit: the run goes on to 4 objects
    sanity = json.loads((tmp_path / "eval" / "sanity.json").read_text())
    correlations = sanity["spearman_after_top_k_randomised"]
    assert sanity["items"] == 2
    assert set(correlations) == {"daam", "daam_from_3", "rollout", "generic_attention"}
    for method, values in correlations.items():
        assert len(values) == 6 and all(-1 <= v <= 1 for v in values), method
        assert values[-1] < 0.9, method  # all blocks re-initialised: maps no longer follow the trained model
    assert (tmp_path / "eval" / "sanity.md").read_text().startswith("| method | top 1 |")
    records = (tmp_path / "eval" / "records.jsonl").read_text().splitlines()
    assert len(records) == 4 and len({json.loads(r)["item"] for r in records}) == 4
    summary = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert summary["items"] == 4 and 0 <= summary["methods"]["daam"]["energy"] <= 1
    assert len(summary["daam_per_block"]["energy"]) == 6
    table = (tmp_path / "eval" / "results.md").read_text()
    assert table.startswith("| method | pointing_game ↑ | energy ↑ | ap ↑ | perturbation_pos ↓ |")
    assert (tmp_path / "eval" / "results.csv").read_text().splitlines()[
        0
    ] == "method,pointing_game,energy,ap,perturbation_pos"
    assert (tmp_path / "eval" / "per_block.png").stat().st_size > 1000
    assert main([*args[:-1], "pointing_game,nonsense"]) == 2
    assert "unknown metric 'nonsense'; known: pointing_game" in capsys.readouterr().err


def test_ilsvrc_box_annotations_become_masks(tmp_path):
    import numpy as np
    from PIL import Image

    from vitflow.data.items import load_mask, read_items

    (tmp_path / "data" / "n01440764").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "data" / "n01440764" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "ILSVRC2012_val_00000001.xml").write_text(
        "<annotation><size><width>40</width><height>30</height><depth>3</depth></size>"
        "<object><name>n01440764</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>11</xmax><ymax>7</ymax></bndbox></object>"
        "<object><name>n01440764</name><bndbox><xmin>30</xmin><ymin>20</ymin><xmax>39</xmax><ymax>29</ymax></bndbox></object>"
        "</annotation>"
    )
    (item,) = read_items(tmp_path / "data", boxes=tmp_path / "boxes")
    mask = load_mask(item.mask)  # read when the item is, not when the list is made
    assert item.target == 0 and mask.shape == (30, 40)
    assert mask.sum() == 10 * 5 + 10 * 10 and mask[3, 2] and mask[7, 11] and not mask[8, 11]
    assert np.array_equal(mask[20:, 30:], np.ones((10, 10), bool))


def test_masks_follow_the_model_crop():
    import numpy as np
    from models import make_timm

    from vitflow.data import Preprocessing
    from vitflow.data.items import mask_at

    preprocessing = Preprocessing.for_timm(make_timm("vit_tiny_patch16_224"))  # resize 71, centre crop 64
    mask = np.zeros((100, 100), bool)
    mask[:, :50] = True  # left half
    moved = mask_at(mask, preprocessing)
    assert moved.shape == (64, 64)
    assert moved[:, :30].all() and not moved[:, 34:].any()  # still the left half after the crop


def test_transformer_blocks_are_found_in_every_family():
    import transformers
    from models import make_timm
    from reference_families import perturb
    from torchvision.models.vision_transformer import VisionTransformer

    from vitflow.adapters import resolve_adapter

    def transformer_blocks(model):
        return list(resolve_adapter(model).blocks())

    timm_model = make_timm("vit_tiny_patch16_224")
    assert transformer_blocks(timm_model) == list(timm_model.blocks)
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                                    intermediate_size=96, image_size=32, patch_size=8)  # fmt: skip
    hf = perturb(transformers.ViTForImageClassification(config))
    assert transformer_blocks(hf) == list(hf.vit.layers)  # transformers 5 (4.x: vit.encoder.layer)
    tv = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=48, mlp_dim=96)
    assert transformer_blocks(tv) == list(tv.encoder.layers)
    cait = timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, depth=2)
    assert transformer_blocks(cait) == list(cait.blocks_token_only)  # the blocks with a [class] row


def test_per_block_metrics_default_to_the_chosen_ones_and_the_plan_is_said_first(tmp_path, capsys):
    assert main(["scenes", "--out", str(tmp_path / "s"), "--n", "3", "--size", "96"]) == 0
    args = ["evaluate", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "e"), "--methods",
            "daam,rollout", "--metrics", "pointing_game,energy", "--quiet", "--workers", "0"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ("vitflow: note: evaluate: 3 items; daam, rollout; scored by pointing_game, energy; after every "
            "block, daam by pointing_game, energy") in err  # fmt: skip
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert set(results["per_block"]["daam"]) == {"pointing_game", "energy"}  # not insertion, not the rest
    assert len(results["per_block"]["daam"]["energy"]) == 6  # the demo ViT's blocks
    assert main([*args, "--out", str(tmp_path / "none"), "--per-block-metrics", ""]) == 0
    assert "no per-block metrics" in capsys.readouterr().err
    assert not json.loads((tmp_path / "none" / "results.json").read_text()).get("per_block")
