"""The journeys users take, for every model family: every command over more than one batch, on
tiny random models saved the way users save them, with outputs checked for content.

Each family is a checkpoint or a directory on disk and the command-line options that load it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file

from vitflow import DAAM, load_maps
from vitflow.cli import main
from vitflow.data.images import load_image
from vitflow.data.items import read_items
from vitflow.data.scenes import write_scenes
from vitflow.methods.run import explain_all, method_names
from vitflow.models import load_model
from vitflow.registry import METRICS

pytestmark = pytest.mark.filterwarnings("ignore:Dinov2ForImageClassification")
CLASSES = 8  # the scenes' classes


def _spread(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Random weights with no zeros (timm initialises some to zero), so maps are not trivial."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


@dataclass
class Family:
    name: str
    options: list[str]  # command-line options that load the model
    classifier: bool = True  # has class logits (explain and evaluate without a bank)
    extra: dict = field(default_factory=dict)


def _timm(root: Path, name: str, **kwargs) -> list[str]:
    model = _spread(timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs))
    path = root / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return ["--model", name, "--checkpoint", str(path)]  # the image size comes from the checkpoint


HF_SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)


def _hf(root: Path, model: torch.nn.Module, processor) -> list[str]:
    folder = root / type(model).__name__
    _spread(model).save_pretrained(folder)
    processor.save_pretrained(folder)
    return ["--model", f"hf:{folder}"]


def _torchvision(root: Path) -> list[str]:
    import torchvision

    model = _spread(torchvision.models.vit_b_32(num_classes=CLASSES, image_size=64), 0.02)
    path = root / "tv.safetensors"
    save_file(model.state_dict(), path)
    return ["--model", "torchvision:vit_b_32", "--checkpoint", str(path)]


def _open_clip(root: Path) -> list[str]:
    import open_clip
    from open_clip import factory

    factory._MODEL_CONFIGS["vitflow-tiny-clip"] = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 12, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    model = _spread(open_clip.create_model("vitflow-tiny-clip", pretrained=None), 0.02)
    path = root / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return ["--model", "open_clip:vitflow-tiny-clip", "--checkpoint", str(path)]


def _build(name: str, root: Path) -> Family:
    torch.manual_seed(0)
    if name == "timm_vit":
        return Family(name, _timm(root, "vit_tiny_patch16_224", img_size=48))
    if name == "timm_distilled":
        return Family(name, _timm(root, "deit_tiny_distilled_patch16_224", img_size=48))
    if name == "timm_registers":
        return Family(name, _timm(root, "vit_small_patch14_reg4_dinov2", img_size=28))
    if name == "timm_cait":
        return Family(name, _timm(root, "cait_xxs24_224", img_size=32))
    size = {"height": 32, "width": 32}
    if name == "hf_vit":
        labels = {i: f"class {i}" for i in range(CLASSES)}
        config = transformers.ViTConfig(
            **HF_SMALL, num_labels=CLASSES, id2label=labels, label2id={v: k for k, v in labels.items()}
        )
        processor = transformers.ViTImageProcessor(size=size)
        return Family(name, _hf(root, transformers.ViTForImageClassification(config), processor))
    if name == "hf_dinov2":
        config = transformers.Dinov2Config(**HF_SMALL, num_labels=CLASSES)
        processor = transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size=size)
        return Family(name, _hf(root, transformers.Dinov2ForImageClassification(config), processor))
    if name == "hf_clip_vision":
        config = transformers.CLIPVisionConfig(**HF_SMALL, projection_dim=16)
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=size)
        return Family(
            name, _hf(root, transformers.CLIPVisionModelWithProjection(config), processor), classifier=False
        )
    if name == "torchvision":
        return Family(name, _torchvision(root))
    if name == "open_clip":
        texts = [f"a photo of a {c}" for c in ("cat", "dog", "fox")]
        return Family(name, _open_clip(root), extra={"texts": [a for t in texts for a in ("--text", t)]})
    raise ValueError(name)


FAMILIES = [
    "timm_vit",
    "timm_distilled",
    "timm_registers",
    "timm_cait",
    "hf_vit",
    "hf_dinov2",
    "hf_clip_vision",
    "torchvision",
    "open_clip",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Scenes with masks (3 scenes, ImageFolder layout) and a folder of real-world photo files."""
    root = tmp_path_factory.mktemp("journey")
    write_scenes(root / "scenes", 3, seed=5, size=64)
    photos = root / "photos"
    (photos / "sub dir").mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photos / "rgb.png")
    Image.fromarray(pixels).convert("L").save(photos / "gray.jpg")
    Image.fromarray(pixels).convert("RGBA").save(photos / "sub dir" / "alpha é.png")
    Image.fromarray(pixels).convert("P").save(photos / "sub dir" / "palette.gif")
    Image.fromarray(pixels[:3, :, :]).save(photos / "wide.bmp")
    return root


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory.mktemp(request.param))


# one timm model covers the timm backbone path (the other timm models differ only in geometry)
@pytest.fixture(scope="module", params=[f for f in FAMILIES if not f.startswith("timm_") or f == "timm_vit"])
def backbone_family(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory.mktemp(f"{request.param}_backbone"))


def _manifests(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in out.rglob("manifest.json")}


def _library_final_map(family: Family, image: Path, target: int) -> torch.Tensor:
    """The same image explained directly through the library, for the content checks."""
    args = family.options
    spec, checkpoint = args[1], (args[3] if "--checkpoint" in args else None)
    texts = family.extra.get("texts", [])[1::2] or None
    loaded = load_model(spec, checkpoint, texts=texts)
    with DAAM(loaded.model) as daam:
        return daam(loaded.preprocessing(load_image(image))[None], target=target).final[0]


def test_explain_a_folder_in_several_batches(family, data, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "explain",
        str(data / "photos"),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--quiet",
        *family.options,
        *family.extra.get("texts", []),
    ]
    if not family.classifier:  # a backbone: there is no class to explain without a memory bank
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no classifier head" in err[0] and "KNNTarget" in err[0]
        return
    assert main(args) == 0
    manifests = _manifests(out)
    assert sorted(manifests) == [
        "gray",
        "rgb",
        "sub dir/alpha é",
        "sub dir/palette",
        "wide",
    ]
    for name, manifest in manifests.items():
        assert len(manifest["blocks"]) == manifest["num_blocks"] >= 2, name
        files = sorted(p.name for p in (out / name).iterdir())
        assert files == ["final.jpg", "manifest.json", "viewer.html"], name  # the default bundle
        assert manifest["blocks"][-1]["map"]["max"] > 0
        assert all(np.isfinite(b["map"]["sum"]) for b in manifest["blocks"])
    # content: the folder's last image (alone in the third batch) matches the library's map
    manifest = manifests["wide"]
    final = _library_final_map(family, data / "photos" / "wide.bmp", manifest["target"]["index"])
    assert list(final.shape) == manifest["grid"]
    assert manifest["blocks"][-1]["map"]["sum"] == pytest.approx(float(final.sum()), rel=1e-4)
    assert manifest["blocks"][-1]["map"]["argmax"] == list(divmod(int(final.argmax()), final.shape[1]))
    saved = load_maps(out)  # every run keeps the maps: the same map, in float16
    row = [Path(p).name for p in saved.images].index("wide.bmp")
    tolerance = 1e-3 * float(final.max())
    torch.testing.assert_close(saved.result.final[row].float(), final.float(), rtol=2e-3, atol=tolerance)


def test_evaluate_every_method_in_several_batches(family, data, tmp_path, capsys):
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--data",
        str(data / "scenes"),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--quiet",
        "--metrics",
        "pointing_game,energy,deletion",
        "--per-block-metrics",
        "energy",
        *family.options,
    ]
    if not family.classifier:
        assert main(args) == 2
        assert "no classifier head" in capsys.readouterr().err
        return
    assert main(args) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3  # 3 scenes in batches of 2 and 1
    # methods a family's model cannot run are left out, each named in a note before the run
    err = capsys.readouterr().err
    left_out: set[str] = set()
    for line in err.splitlines():
        if " left out: " in line:
            names = line.split("note: ", 1)[-1].split(" left out: ")[0]
            left_out |= {name.strip() for name in names.split(",")}
    assert left_out <= set(method_names()) and "daam" not in left_out
    expected = set(method_names()) - left_out
    if family.name == "timm_cait":  # class attention: nothing token-to-token to propagate
        from vitflow.registry import METHODS

        propagating = {e.name for e in METHODS.entries() if e.info.get("full_attention") and not e.pattern}
        assert {"rollout", "generic_attention", "daam_rollout", "legrad"} <= propagating <= left_out
    if family.name == "timm_vit":  # every method reaches a plain timm ViT
        assert not left_out
    for record in records:
        assert set(record["scores"]) == expected
        for method, scores in record["scores"].items():
            assert set(scores) == {"pointing_game", "energy", "deletion"}, method
            assert 0 <= scores["energy"] <= 1 and 0 <= scores["deletion"] <= 1, method
        assert len(record["per_block"]["daam"]) >= 2
    table = (out / "results.md").read_text().splitlines()
    assert [row.split(" | ")[0].lstrip("| ") for row in table[2:]] == [
        m for m in method_names() if m in expected
    ]


def test_evaluate_the_gamma_methods_on_every_family(family, data, tmp_path, capsys):
    """The parameterised CP-LRP methods (gamma rule) run on every family whose attention the hooks
    reach, and are left out with a note elsewhere; the model is unchanged after them."""
    if not family.classifier:
        pytest.skip("no classifier head: evaluate refuses before any method runs (the test above)")
    gamma = ["attnlrp_gamma_0.25", "daam_lrp_gamma_0.25", "daam_lrp_gamma_0.25_x_rollout"]
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(data / "scenes"), "--out", str(out), "--batch-size", "2", "--quiet",
            "--metrics", "energy", "--per-block-metrics", "", "--methods", ",".join(["daam", *gamma]),
            *family.options]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    left_out = {n.strip() for line in err.splitlines() if " left out: " in line
                for n in line.split("note: ", 1)[-1].split(" left out: ")[0].split(",")}  # fmt: skip
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and left_out <= set(gamma)
    if family.name in ("timm_vit", "timm_distilled", "torchvision"):  # timm Attention, MultiheadAttention
        assert not left_out
    for record in records:
        assert set(record["scores"]) == {"daam", *gamma} - left_out
        assert all(0 <= scores["energy"] <= 1 for scores in record["scores"].values())


def test_bank_build_info_and_knn_explain(backbone_family, data, tmp_path, capsys):
    family = backbone_family
    bank = tmp_path / "b.bank"
    build = [
        "bank",
        "build",
        "--data",
        str(data / "scenes" / "images"),
        "--out",
        str(bank),
        "--quiet",
        "--batch-size",
        "2",
        *family.options,
    ]
    assert main(build) == 0, capsys.readouterr().err
    assert main(["bank", "info", str(bank)]) == 0
    assert "3 x " in capsys.readouterr().out
    out = tmp_path / "knn"
    code = main(
        [
            "explain",
            str(data / "photos" / "rgb.png"),
            str(data / "photos" / "gray.jpg"),
            "--bank",
            str(bank),
            "--k",
            "2",
            "--out",
            str(out),
            "--batch-size",
            "1",
            "--quiet",
            *family.options,
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifests = _manifests(out)
    assert len(manifests) == 2
    for manifest in manifests.values():
        assert manifest["rho"] == "identity" and manifest["bank"] == str(bank)
        assert sum(entry["probability"] for entry in manifest["top5"]) == pytest.approx(1.0)


def test_custom_adapter_journey(data, tmp_path):
    """A hand-written ViT with a few-line adapter: files explained and evaluated through the
    library functions the command line calls."""
    from test_families import TinyViT, TinyViTAdapter

    from vitflow.data.preprocess import Preprocessing
    from vitflow.runs.evaluate import evaluate
    from vitflow.runs.explain import explain_files

    class Adapter(TinyViTAdapter):
        def gradcam_layer(self):  # the normalisation before the last attention, as timm's norm1
            return self.model.norms[-1]

    torch.manual_seed(3)
    model = TinyViT(classes=CLASSES).eval()

    def transform(image):
        array = np.asarray(image.resize((32, 32)), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)

    preprocessing = Preprocessing(transform, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), {"size": 32})
    report = explain_files(
        model, preprocessing, [data / "photos"], tmp_path / "x", adapter=Adapter, batch_size=2
    )
    assert report.ok and len(report.manifests) == 5
    assert all(m["grid"] == [4, 4] and m["num_blocks"] == 2 for m in report.manifests)
    items = read_items(data / "scenes")
    summary = evaluate(
        model,
        preprocessing,
        items,
        tmp_path / "e",
        metrics=["energy"],
        per_block_metrics=[],
        batch_size=2,
        adapter=Adapter,
    )
    # a custom adapter has no readout of intermediate blocks (LeGrad), and CP-LRP's hooks do not
    # reach its attention module: those methods are left out, every other one runs
    left_out = {"legrad", "attnlrp", "daam_lrp", "daam_lrp_x_rollout", "daam_lrp_guided"}
    assert summary["items"] == 3 and set(summary["methods"]) == set(method_names()) - left_out


def test_evaluate_scores_are_the_metric_of_that_methods_own_map(data, tmp_path):
    """Each record's score is the registered metric applied to that method's map for that item."""
    torch.manual_seed(0)
    family = _build("timm_vit", tmp_path)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(data / "scenes"),
                "--out",
                str(out),
                "--quiet",
                "--batch-size",
                "3",
                "--metrics",
                "energy,perturbation_pos",
                "--per-block-metrics",
                "",
                *family.options,
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    loaded = load_model(family.options[1], family.options[3])
    items = read_items(data / "scenes")
    from vitflow.adapters import resolve_adapter
    from vitflow.data.items import load_mask, mask_at
    from vitflow.metrics import ScoringContext

    adapter = resolve_adapter(loaded.model)
    x = torch.stack([loaded.preprocessing(load_image(item.path)) for item in items])
    target = torch.tensor([item.target for item in items])
    masks = torch.stack([mask_at(load_mask(item.mask), loaded.preprocessing) for item in items])
    maps = explain_all(adapter, x, target, method_names())
    context = ScoringContext(adapter.forward, x, target, masks)
    for method in method_names():
        for metric in ("energy", "perturbation_pos"):
            expected = METRICS.call(metric, maps[method], context)
            got = [r["scores"][method][metric] for r in records]
            assert got == pytest.approx(expected.tolist(), abs=1e-6), (method, metric)
    # and different methods do get different scores (the record is not one map copied)
    energies = {m: tuple(r["scores"][m]["energy"] for r in records) for m in method_names()}
    assert len(set(energies.values())) > 1
