"""`vitflow explain` end to end on a random-init timm model saved as a checkpoint."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from vitflow.cli import main

MODEL = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, num_classes=7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_file(model.state_dict(), root / "weights.safetensors")
    torch.save({"state_dict": model.state_dict()}, root / "weights.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(root / "wide.jpg")
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(root / "square.png")
    (root / "corrupt.jpg").write_bytes((root / "wide.jpg").read_bytes()[:300])  # truncated JPEG
    (root / "notes.jpg").write_text("a text file with an image suffix")
    return root, model.eval()


def test_explain_writes_overlays_gif_and_manifest(workspace, capsys):
    root, model = workspace
    out = root / "run"
    code = main(
        [
            "explain",
            str(root / "wide.jpg"),
            str(root / "square.png"),
            "--model",
            MODEL,
            "--checkpoint",
            str(root / "weights.safetensors"),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--blocks",
            "--gif",
        ]
    )
    assert code == 0
    for stem in ("wide", "square"):
        folder = out / stem
        names = sorted(p.name for p in folder.iterdir())
        assert names == [
            "block_01.png",
            "block_02.png",
            "block_03.png",
            "block_04.png",
            "block_05.png",
            "block_06.png",
            "block_07.png",
            "block_08.png",
            "block_09.png",
            "block_10.png",
            "block_11.png",
            "block_12.png",
            "final.jpg",
            "flow.gif",
            "input.png",
            "manifest.json",
            "viewer.html",
        ]
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["model"] == MODEL and manifest["image"].endswith(
            stem + (".jpg" if stem == "wide" else ".png")
        )
        assert manifest["grid"] == [14, 14] and manifest["num_blocks"] == 12
        probs = [entry["probability"] for entry in manifest["top5"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
        assert manifest["target"]["index"] == manifest["top5"][0]["index"]
        maxima = [block["map"]["max"] for block in manifest["blocks"]]
        assert maxima == sorted(maxima) and maxima[-1] > 0  # accumulated maps only grow
        gif = Image.open(folder / "flow.gif")
        # drawn on the original photo (240 x 320, 200 x 200) at its own size (not enlarged above 224
        # px); the animation too (at most 384 px)
        shown = {"wide": (320, 240), "square": (224, 224)}[stem]
        assert gif.n_frames == 12 and gif.size == shown
        assert Image.open(folder / "final.jpg").size == shown
        assert Image.open(folder / "input.png").size == (224, 224)  # the crop the model saw
        first, last = np.asarray(gif.convert("RGB")), None
        gif.seek(11)
        last = np.asarray(gif.convert("RGB"))
        assert np.abs(first.astype(int) - last.astype(int)).mean() > 1  # the flow changes
        assert Image.open(folder / "block_12.png").size == shown
        corner = np.asarray(Image.open(folder / "block_03.png").convert("RGB"))[:12, :60]
        # the label's box, and its text (white, antialiased: a 10 px font reaches 249)
        assert (corner == 0).all(axis=2).any() and (corner >= 240).all(axis=2).any()
    # the manifest agrees with the library on the same preprocessed input
    from vitflow import DAAM
    from vitflow.data import Preprocessing, load_image

    pre = Preprocessing.for_timm(model)
    with DAAM(model) as daam:
        result = daam(pre(load_image(root / "square.png"))[None])
    manifest = json.loads((out / "square" / "manifest.json").read_text())
    assert manifest["target"]["index"] == int(result.target[0])
    assert manifest["blocks"][-1]["map"]["max"] == pytest.approx(float(result.final.max()), rel=1e-5)
    assert "wide.jpg: class" in capsys.readouterr().out


def test_bad_images_are_reported_one_line_each_and_the_rest_processed(workspace, capsys):
    root, _ = workspace
    out = root / "mixed"
    code = main(
        [
            "explain",
            str(root / "corrupt.jpg"),
            str(root / "missing.png"),
            str(root / "notes.jpg"),
            str(root / "square.png"),
            "--model",
            MODEL,
            "--checkpoint",
            str(root / "weights.pth"),
            "--out",
            str(out),
            "--target",
            "2",
        ]
    )
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vitflow: error:")]
    assert len(err) == 4
    assert "corrupt.jpg: unreadable or corrupt image" in err[0]
    assert "missing.png: no such file" in err[1]
    assert "notes.jpg: not an image file" in err[2]
    assert err[-1] == "vitflow: error: 3 of 4 images failed (1 explained)"
    manifest = json.loads((out / "square" / "manifest.json").read_text())
    assert manifest["target"]["index"] == 2
    assert not (out / "corrupt").exists() and not list(out.rglob("*.tmp"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_model_problems_are_one_line_usage_errors(workspace, capsys):
    root, _ = workspace
    image = str(root / "square.png")
    assert main(["explain", image, "--model", "no_such_vit", "--out", str(root / "x")]) == 2
    assert "timm has no model named 'no_such_vit'" in capsys.readouterr().err
    assert (
        main(
            [
                "explain",
                image,
                "--model",
                "deit_small_patch16_224",
                "--checkpoint",
                str(root / "weights.safetensors"),
                "--out",
                str(root / "x"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "does not fit VisionTransformer" in err and len(err.strip().splitlines()) == 1
    (root / "pickle.pth").write_bytes(b"\x80\x04\x95 not a real pickle")
    assert (
        main(
            [
                "explain",
                image,
                "--model",
                MODEL,
                "--checkpoint",
                str(root / "pickle.pth"),
                "--out",
                str(root / "x"),
            ]
        )
        == 2
    )
    assert "cannot be read as safetensors or a weights-only torch file" in capsys.readouterr().err
    assert (
        main(
            [
                "explain",
                image,
                "--model",
                MODEL,
                "--checkpoint",
                str(root / "weights.pth"),
                "--target",
                "99",
                "--out",
                str(root / "x"),
            ]
        )
        == 2
    )
    assert "out of range for a model with 7 classes" in capsys.readouterr().err


def test_checkpoint_loading_refuses_arbitrary_pickles(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pth")
    from vitflow.models.checkpoints import ModelLoadError, read_state_dict

    with pytest.raises(ModelLoadError, match="weights-only"):
        read_state_dict(tmp_path / "evil.pth")


@pytest.fixture
def silent_hub():
    """A model hub that never answers: a local socket that listens and never accepts."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _explain_offline(args: list[str], out, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    command = [sys.executable, "-m", "vitflow.cli", "explain", *args, "--out", str(out)]
    env = {"PATH": "/usr/bin:/bin", **env}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    return proc, time.perf_counter() - started


def test_an_unreachable_hub_or_a_model_daam_refuses_fails_in_seconds_in_one_whole_line(
    workspace, tmp_path, silent_hub
):
    """No answer from the hub: one complete line (what failed, what to do, where the cache is)
    after the short probe, not after the hub client's minute of retries; HF_HUB_OFFLINE: at
    once. An architecture DAAM cannot explain is refused before anything is downloaded, with its
    reason; the refused runs leave no output folder."""
    root, _ = workspace
    cache = tmp_path / "hf"
    hub = {"HF_ENDPOINT": silent_hub, "HF_HOME": str(cache)}
    image = str(root / "square.png")
    proc, seconds = _explain_offline([image, "--model", MODEL], tmp_path / "o1", hub)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"vitflow: error: {MODEL}: could not reach {silent_hub} within 4 s")
    assert "--checkpoint FILE" in lines[0] and lines[0].endswith("copy that folder here)")
    assert str(cache / "hub") in lines[0]
    assert seconds < 60  # generous: the probe waits 4 s; timm's own retries took 50 s and more
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(cache)}
    proc, _ = _explain_offline([image, "--model", MODEL], tmp_path / "o2", offline)
    assert proc.returncode == 2 and "are not in the cache and HF_HUB_OFFLINE is set" in proc.stderr
    for name, reason in (
        ("swin_tiny_patch4_window7_224", "hierarchical vision transformer without a [class] token"),
        ("resnet18", "timm.models.resnet.ResNet is not a Vision Transformer"),
    ):
        proc, _ = _explain_offline([image, "--model", name], tmp_path / name, hub)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and f"{name}: DAAM cannot explain it: " in lines[0]
        assert reason in lines[0] and "could not reach" not in lines[0]
    refused = ("o1", "o2", "swin_tiny_patch4_window7_224", "resnet18")
    assert not any((tmp_path / name).exists() for name in refused)


def test_torchvision_weights_from_a_server_that_does_not_answer_fail_in_seconds(
    workspace, tmp_path, silent_hub
):
    """torchvision's weights come from download.pytorch.org, not the hub: a server that does not
    answer (here a proxy that never does) is named in one whole line after the short probe, with
    where torch keeps the weights and the file to fetch elsewhere."""
    root, _ = workspace
    env = {"HTTPS_PROXY": silent_hub, "HTTP_PROXY": silent_hub, "TORCH_HOME": str(tmp_path / "torch")}
    proc, seconds = _explain_offline([str(root / "square.png"), "--model", "torchvision:vit_b_16"],
                                     tmp_path / "o", env)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("vitflow: error: torchvision:vit_b_16: could not reach download.pytorch.org "
                               "within 4 s")  # fmt: skip
    assert "--checkpoint FILE" in lines[0] and str(tmp_path / "torch" / "hub" / "checkpoints") in lines[0]
    assert lines[0].endswith("fetch https://download.pytorch.org/models/vit_b_16-c867db91.pth on a machine "
                             "that is online and put it there)")  # fmt: skip
    assert seconds < 60 and not (tmp_path / "o").exists()


def test_help_documents_every_option():
    proc = subprocess.run(
        [sys.executable, "-m", "vitflow.cli", "explain", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    for option in (
        "--model",
        "--checkpoint",
        "--target",
        "--out",
        "--batch-size",
        "--device",
        "--mode",
        "--alpha",
        "--image-weight",
        "--cmap",
        "--rho",
        "--normalize-blocks",
        "--gif-duration",
    ):
        assert option in proc.stdout


def test_a_refused_run_leaves_nothing_and_a_file_lands_where_its_folder_would(tmp_path, capsys):
    """A class out of range is found by the model's first batch: the output folder the run made
    is removed again (one it did not make is kept). A file argument and a folder argument name
    an image's output the same way."""
    from vitflow.data.scenes import generate_scene

    (tmp_path / "photos").mkdir()
    Image.fromarray(generate_scene(1, 0).image).save(tmp_path / "photos" / "cat.png")
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "photos"), "--target", "99", "--out", str(out), "--quiet"]) == 2
    assert "out of range" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    assert main(["explain", str(tmp_path / "photos"), "--target", "99", "--out", str(out), "--quiet"]) == 2
    assert out.is_dir()
    for source, into in ((tmp_path / "photos", "a"), (tmp_path / "photos" / "cat.png", "b")):
        assert main(["explain", str(source), "--out", str(tmp_path / into), "--quiet"]) == 0
    assert all((tmp_path / into / "cat" / "manifest.json").is_file() for into in ("a", "b"))
