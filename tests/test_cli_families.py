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


def test_torchvision_model_with_a_checkpoint(tmp_path, image):
    import torchvision

    torch.manual_seed(1)
    save_file(perturb(torchvision.models.vit_b_32(num_classes=4)).state_dict(), tmp_path / "tv.safetensors")
    checkpoint = str(tmp_path / "tv.safetensors")
    args = ["--model", "torchvision:vit_b_32", "--checkpoint", checkpoint, "--target", "3"]
    code = main(["explain", str(image), *args, "--out", str(tmp_path / "o")])
    assert code == 0
    manifest = _manifest(tmp_path / "o")
    assert manifest["grid"] == [7, 7] and manifest["target"]["index"] == 3 and manifest["num_blocks"] == 12


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
    finally:
        silent.close()
    assert not (tmp_path / "out").exists()
