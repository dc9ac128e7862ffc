"""The README is a front page whose commands and Python run as written.

A new user's journey from a fresh clone: every ``vitflow`` line of the README's shell blocks and
every Python block, run in a folder holding what those lines name (``photo.jpg``, ``photos/``,
``weights.safetensors``, ``imagenet/train``). No hub is reachable here, so the pretrained weights
the lines ask for come from a local Hugging Face cache (``HF_HUB_OFFLINE=1``) holding random
weights under the real file names: the loading code is the user's, only the bytes differ.
The install and test lines are the ones ``.ci/run`` runs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def commands() -> list[str]:
    """The ``vitflow`` lines of the shell blocks, in order, comments left on (the shell drops them)."""
    return [line for block in blocks("bash") for line in block.splitlines() if line.startswith("vitflow ")]


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for heading in ("## Install", "## Explain images", "## In Python", "## Develop", "## Documentation"):
        assert f"\n{heading}\n" in text
    assert 'pip install ".[cli]"' in text  # the user's install, apart from the developer's
    # every relative link and picture exists (docs pages, pictures, anchors' pages)
    targets = re.findall(r"\]\(((?!https?:)[^)#\s]+)(?:#[^)]*)?\)", text)
    targets += re.findall(r'src="((?!https?:)[^"]+)"', text)
    assert len(targets) >= 20
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_develop_lines_are_what_ci_runs():
    develop = README.read_text().split("## Develop", 1)[1]
    lines = [line.split("#")[0].strip() for line in blocks("bash")[-1].splitlines()]
    assert blocks("bash")[-1] in develop and len(lines) == 2
    ci = (ROOT / ".ci" / "run").read_text().replace("python -m pip install --quiet", "pip install")
    for line in lines:
        assert line in ci, f"README's {line!r} is not what .ci/run runs"


def _cache_timm_weights(hub: Path, name: str) -> None:
    """``timm.create_model(name, pretrained=True)`` finds random weights in the local cache."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model(name, pretrained=False)
    repo = model.pretrained_cfg["hf_hub_id"]
    folder = hub / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / "snapshots" / revision / "model.safetensors"))


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A user's working folder and an environment whose hub cache holds the README's models."""
    skimage_data = pytest.importorskip("skimage.data", reason="the sample photos come from scikit-image")
    import torch
    from safetensors.torch import save_file

    here = tmp_path_factory.mktemp("user")
    hub = here / ".hf" / "hub"
    for name in ("deit_small_patch16_224", "vit_small_patch16_224.dino"):
        _cache_timm_weights(hub, name)
    Image.fromarray(skimage_data.chelsea()).save(here / "photo.jpg")
    (here / "photos").mkdir()
    Image.fromarray(skimage_data.chelsea()).save(here / "photos" / "cat.jpg")
    Image.fromarray(skimage_data.coffee()).convert("L").save(here / "photos" / "coffee.png")
    import timm

    torch.manual_seed(0)
    save_file(timm.create_model("deit_small_patch16_224").state_dict(), str(here / "weights.safetensors"))
    rng = np.random.default_rng(0)
    for label in ("n01440764", "n02102040"):
        (here / "imagenet" / "train" / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (160 + 16 * i, 200, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(here / "imagenet" / "train" / label / f"{i}.JPEG")
    env = {
        **os.environ,
        "HF_HOME": str(here / ".hf"),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "src"),
        "COLUMNS": "100",
    }
    return here, env


def test_readme_commands_run_as_written(user_folder):
    here, env = user_folder
    lines = commands()
    assert len(lines) >= 8
    for line in lines:
        run = subprocess.run(
            ["bash", "-c", line], cwd=here, env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, f"{line}\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
        words = shlex.split(line.split(" #")[0])
        if "--out" in words and words[1] == "explain":
            out = here / words[words.index("--out") + 1]
            finals = sorted(out.glob("*/final.jpg"))
            assert finals and (out / "index.html").is_file(), f"{line}: no pictures in {out}"
    tabby = sorted((here / "runs" / "tabby").glob("*/manifest.json"))
    assert len(tabby) == 2 and all('"tabby, tabby cat"' in m.read_text() for m in tabby)
    assert (here / "runs" / "eval" / "results.md").read_text().count("| daam |") == 1
    assert (here / "dino_s16.bank").is_file()


def test_readme_python_runs_as_written(user_folder):
    here, env = user_folder
    script = "\n".join(blocks("python"))
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=here, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "tensor([281]) torch.Size([1, 12, 14, 14])" in run.stdout  # what the comment says it prints
    with Image.open(here / "daam.jpg") as picture:
        assert picture.size == (224, 224)
