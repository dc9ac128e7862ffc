"""`vitflow explain --model FAMILY:NAME` for every family, offline from local files."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from reference_families import perturb
from safetensors.torch import save_file

from vitflow.cli import main


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)).save(path)
    return path


def _manifest(out, stem="photo"):
    return json.loads((out / stem / "manifest.json").read_text())


def test_hf_model_from_a_local_directory(tmp_path, image, capsys):
    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "fox"}
    config = transformers.ViTConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, image_size=32,
        patch_size=8, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    perturb(transformers.ViTForImageClassification(config)).save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    assert (
        main(["explain", str(image), "--model", f"hf:{tmp_path / 'vit'}", "--out", str(tmp_path / "o")]) == 0
    )
    manifest = _manifest(tmp_path / "o")
    assert manifest["grid"] == [4, 4] and manifest["target"]["name"] in {"cat", "dog", "fox"}
    assert manifest["model"] == f"hf:{tmp_path / 'vit'}"
    # classes by the model's own names (id2label), on the command line and in Python
    model = f"hf:{tmp_path / 'vit'}"
    named = ["explain", str(image), "--model", model, "--target"]
    assert main([*named, " DOG", "--out", str(tmp_path / "d")]) == 0
    assert _manifest(tmp_path / "d")["target"] | {"probability": 0, "logit": 0, "score": 0} == {
        "index": 1, "name": "dog", "probability": 0, "logit": 0, "score": 0}  # fmt: skip
    capsys.readouterr()
    assert main([*named, "dgo", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "target 'dgo' is none of this model's 3 class names; did you mean 'dog' (1)?" in err
    assert not (tmp_path / "e").exists()
    from vitflow import DAAM

    loaded = transformers.ViTForImageClassification.from_pretrained(tmp_path / "vit").eval()
    with DAAM(loaded) as daam:
        assert daam(torch.randn(2, 3, 32, 32), target=["fox", "Cat"]).target.tolist() == [2, 0]


def test_torchvision_model_with_a_checkpoint(tmp_path, image, capsys):
    import torchvision

    torch.manual_seed(1)
    save_file(perturb(torchvision.models.vit_b_32(num_classes=4)).state_dict(), tmp_path / "tv.safetensors")
    checkpoint = str(tmp_path / "tv.safetensors")
    args = ["--model", "torchvision:vit_b_32", "--checkpoint", checkpoint, "--target", "3"]
    code = main(["explain", str(image), *args, "--out", str(tmp_path / "o")])
    assert code == 0
    manifest = _manifest(tmp_path / "o")
    assert manifest["grid"] == [7, 7] and manifest["target"]["index"] == 3 and manifest["num_blocks"] == 12
    # a checkpoint of 4 classes has no names: the index is asked for
    assert main(["explain", str(image), *args[:4], "--target", "cat", "--out", str(tmp_path / "n")]) == 2
    assert "target 'cat': this model has no class names; give the class index" in capsys.readouterr().err
    # an ImageNet-1k checkpoint has ImageNet's names (from torchvision's weights' metadata, offline)
    save_file(torchvision.models.vit_b_32().state_dict(), tmp_path / "in1k.safetensors")
    imagenet = ["--model", "torchvision:vit_b_32", "--checkpoint", str(tmp_path / "in1k.safetensors")]
    assert main(["explain", str(image), *imagenet, "--target", " TABBY", "--out", str(tmp_path / "t")]) == 0
    target = _manifest(tmp_path / "t")["target"]
    assert (target["index"], target["name"]) == (281, "tabby")


def test_open_clip_model_with_texts(tmp_path, image):
    import open_clip

    torch.manual_seed(2)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "clip.safetensors")
    checkpoint = str(tmp_path / "clip.safetensors")
    texts = ["--text", "a photo of a cat", "--text", "a photo of a dog"]
    code = main(["explain", str(image), "--model", "open_clip:ViT-B-32", "--checkpoint", checkpoint, *texts,
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 0
    manifest = _manifest(tmp_path / "o")
    assert manifest["target"]["name"] in {"a photo of a cat", "a photo of a dog"}
    code = main(["explain", str(image), "--model", "open_clip:ViT-B-32", "--checkpoint", checkpoint, *texts,
                 "--target", "A Photo of a Dog", "--out", str(tmp_path / "d")])  # fmt: skip
    assert code == 0 and _manifest(tmp_path / "d")["target"]["index"] == 1
    assert sum(e["probability"] for e in manifest["top5"]) == pytest.approx(1.0)
    assert main(["explain", str(image), "--model", "open_clip:ViT-B-32", "--checkpoint",
                 str(tmp_path / "clip.safetensors"), "--out", str(tmp_path / "x")]) == 2  # fmt: skip


def test_family_errors_are_one_line(tmp_path, image, capsys):
    assert main(["explain", str(image), "--model", "keras:vit", "--out", str(tmp_path / "o")]) == 2
    assert "unknown model family 'keras'" in capsys.readouterr().err
    assert (
        main(["explain", str(image), "--model", "torchvision:resnet9000", "--out", str(tmp_path / "o")]) == 2
    )
    assert "torchvision has no model named 'resnet9000'" in capsys.readouterr().err
    assert (
        main(
            ["explain", str(image), "--model", "vit_tiny_patch16_224", "--text", "x", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "--text applies to open_clip" in capsys.readouterr().err


HUB = "hf:google/vit-base-patch16-224"


def test_offline_hub_model_fails_in_one_line(tmp_path, image):
    import socket

    silent = socket.socket()  # a hub that never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        for env in ({"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": endpoint}):
            env = {**env, "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
            proc = subprocess.run(
                [sys.executable, "-m", "vitflow.cli", "explain", str(image), "--model", HUB, "--out",
                 str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300,
            )  # fmt: skip
            assert proc.returncode == 2
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"vitflow: error: {HUB}: ")
            assert "download the model with its config into a directory and pass hf:DIRECTORY" in lines[0]
            reason = "HF_HUB_OFFLINE is set" if "HF_HUB_OFFLINE" in env else f"could not reach {endpoint}"
            assert reason in lines[0]
        env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
        proc = subprocess.run(  # open_clip's weights come from the same hub
            [sys.executable, "-m", "vitflow.cli", "explain", str(image), "--model",
             "open_clip:ViT-B-32/openai", "--text", "a cat", "--text", "a dog", "--out",
             str(tmp_path / "out")],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1
        assert lines[0].startswith(f"vitflow: error: open_clip:ViT-B-32/openai: could not reach {endpoint}")
    finally:
        silent.close()
    assert not (tmp_path / "out").exists()


def test_timm_classes_by_their_imagenet_names(tmp_path, image, capsys):
    """A timm ImageNet classifier (random weights, 1000 classes): ``--target "Tabby Cat"`` and
    ``DAAM(model)(x, target="tabby")`` explain class 281; a typo is answered with close matches."""
    import timm

    from vitflow import DAAM

    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    save_file(model.state_dict(), tmp_path / "in1k.safetensors")
    checkpoint = str(tmp_path / "in1k.safetensors")
    args = ["explain", str(image), "--model", "vit_tiny_patch16_224", "--checkpoint", checkpoint]
    assert main([*args, "--target", "Tabby Cat", "--out", str(tmp_path / "o"), "--no-viewer"]) == 0
    target = _manifest(tmp_path / "o")["target"]
    assert target["index"] == 281 and target["name"] == "tabby, tabby cat"
    capsys.readouterr()
    assert main([*args, "--target", "tabbby", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "target 'tabbby' is none of this model's 1000 class names; did you mean 'tabby' (281)" in err
    assert main([*args, "--target", "crane", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "target 'crane' names 2 classes (134: crane; 517: crane); give the index" in err
    with DAAM(model) as daam:
        assert daam(torch.randn(1, 3, 224, 224), target="tabby").target.tolist() == [281]
    with DAAM(model, class_names=[f"c{i}" for i in range(1000)]) as daam:
        assert daam(torch.randn(1, 3, 224, 224), target="C7").target.tolist() == [7]
