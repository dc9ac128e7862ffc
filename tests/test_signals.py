"""A run stopped by any signal a scheduler or a user sends leaves only complete image folders, says
in one line how to go on, exits with 128 + the signal's number, and its rerun finishes it with the
same bytes as a run that was never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitflow.data.scenes import write_scenes

SCENES = 16


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    write_scenes(root / "s", SCENES, seed=2)
    return root / "s" / "images"


def _explain(scenes: Path, out: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "vitflow", "explain", str(scenes), "--out", str(out), "--batch-size", "2",
            "--chunk", "2", "--workers", "0", "--writers", "1", "--quiet"]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and ".vitflow" not in p.parts
    }


def _manifests(out: Path) -> int:
    """Manifests written so far by a run still going: ``os.walk`` passes over a staging folder
    renamed into place between listing its parent and opening it (``rglob`` raised there)."""
    return sum(files.count("manifest.json") for _, _, files in os.walk(out))


@pytest.fixture(scope="module")
def uninterrupted(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    run = _explain(scenes, out)
    assert run.wait(timeout=300) == 0, run.stderr.read()
    return _files(out)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signalled_run_leaves_whole_folders_and_its_rerun_is_byte_identical(
    signum, scenes, uninterrupted, tmp_path
):
    out = tmp_path / "out"
    run = _explain(scenes, out)
    deadline = time.monotonic() + 240
    while _manifests(out) < 3 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be stopped: give it more scenes"
    os.kill(run.pid, signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 128 + signum, err
    lines = [line for line in err.splitlines() if "bundled demo ViT" not in line]  # the one note before
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0], err
    assert "rerun the same command" in lines[0]
    folders = [p for p in out.rglob("*") if p.is_dir() and not {".vitflow", "maps"} & set(p.parts)]
    bundles = [p for p in folders if any(c.is_file() for c in p.iterdir())]
    assert bundles and len(bundles) < SCENES  # stopped midway
    assert all((p / "manifest.json").is_file() for p in bundles)  # no folder with pictures and no manifest
    assert not [p for p in out.rglob(".*.tmp*")]  # no staging folder left behind

    rerun = _explain(scenes, out)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert _files(out) == uninterrupted


def test_atomic_dir_replaces_a_folder_whole_and_leaves_it_when_the_block_fails(tmp_path):
    from vitflow.atomic import atomic_dir

    target = tmp_path / "bundle"
    with atomic_dir(target) as staging:
        (staging / "a.txt").write_text("one")
        (staging / "b.txt").write_text("one")
        assert not target.exists()  # nothing visible until the block ends
    with atomic_dir(target) as staging:
        (staging / "a.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and (target / "a.txt").read_text() == "two"
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as staging:
        (staging / "a.txt").write_text("three")
        raise KeyboardInterrupt
    assert (target / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging folder left


def test_a_file_and_a_folder_of_the_same_name_keep_both_explanations(tmp_path):
    """``photos/cat.png`` explains into ``OUT/cat/``, ``photos/cat/kitten.png`` into
    ``OUT/cat/kitten/``: replacing the first folder whole must not remove the second's."""
    from vitflow.cli import main

    write_scenes(tmp_path / "s", 2, seed=4)
    images = sorted((tmp_path / "s" / "images").rglob("*.png"))
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    images[0].rename(tmp_path / "photos" / "cat" / "kitten.png")
    images[1].rename(tmp_path / "photos" / "cat.png")
    for _ in range(2):  # the rerun replaces both bundles
        code = main(["explain", str(tmp_path / "photos"), "--out", str(tmp_path / "o"), "--quiet"])
        assert code == 0
        assert (tmp_path / "o" / "cat" / "manifest.json").is_file()
        assert (tmp_path / "o" / "cat" / "kitten" / "manifest.json").is_file()
