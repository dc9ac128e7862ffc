"""The dataset-scale commands under ``torchrun`` (CPU, gloo, 2 processes): the same files and
numbers as one process, resumption across world sizes, and failed or killed ranks reported.

Every run here gets ``OMP_NUM_THREADS=1`` (torchrun's own default for several processes): float32
sums then take the same order in every process, so one process and two give identical bytes. With
other thread counts results agree to float32 rounding (~1e-8), not bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitflow.data.scenes import write_scenes
from vitflow.outputs.maps import load_maps
from vitflow.targets import MemoryBank

FAULT_SCRIPT = str(Path(__file__).with_name("fault_rank.py"))
EVALUATE = ["--batch-size", "2", "--chunk", "2", "--methods", "daam,rollout,gradcam", "--metrics",
            "energy,pointing_game,perturbation_pos", "--per-block-metrics", "energy", "--quiet"]  # fmt: skip


def vitflow(cwd: Path, args: list[str], nproc: int = 1, script: str | None = None, **env: str):
    """``vitflow ARGS`` in one process, or under ``torchrun --standalone --nproc_per_node=N``."""
    if nproc == 1 and script is None:
        command = [sys.executable, "-m", "vitflow", *args]
    else:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        command = [*launch, *([script] if script else ["-m", "vitflow"]), *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """12 demo scenes at the demo model's size; scene 5's file is broken."""
    root = tmp_path_factory.mktemp("distributed")
    manifest = write_scenes(root / "scenes", 12, seed=1, size=96)
    (root / "scenes" / manifest["scenes"][5]["image"]).write_bytes(b"not an image")
    return root


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file but the run's own bookkeeping (which records the ranks)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".vitflow" not in p.parts and "maps" not in p.parts
    }


def test_explain_under_torchrun_writes_what_one_process_writes(data):
    args = ["explain", "scenes/images", "--batch-size", "2", "--chunk", "4", "--save-maps", "--gif",
            "--quiet"]  # fmt: skip
    one = vitflow(data, [*args, "--out", "explain_one"])
    two = vitflow(data, [*args, "--out", "explain_two"], nproc=2)
    for run in (one, two):
        assert run.returncode == 1, run.stderr[-2000:]  # the broken scene
        assert "vitflow: error: 1 of 12 images failed (11 explained)" in run.stderr
    assert "scene_000005.png" in two.stderr  # named by the rank that met it
    first, second = _files(data / "explain_one"), _files(data / "explain_two")
    assert len(first) == 11 * 4 + 1  # final, GIF (--gif), viewer, manifest per image; index.html
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    maps_one, maps_two = load_maps(data / "explain_one"), load_maps(data / "explain_two")
    assert maps_one.ids == maps_two.ids and len(maps_one) == 11
    for name in ("maps", "block_maps", "relevance", "logits", "target", "score"):
        assert torch.equal(getattr(maps_one.result, name), getattr(maps_two.result, name)), name
    records = (data / "explain_two" / ".vitflow").glob("chunk_*.json")
    ranks = {json.loads(p.read_text())["rank"] for p in records}
    assert ranks == {0, 1}  # both ranks did work
    manifest = json.loads((data / "explain_one" / maps_one.ids[3] / "manifest.json").read_text())
    assert manifest["target"]["index"] == int(maps_one.result.target[3])


def test_evaluate_under_torchrun_gives_one_process_records_and_resumes_after_a_killed_rank(data):
    one = vitflow(data, ["evaluate", "--data", "scenes", "--out", "eval_one", *EVALUATE])
    two = vitflow(data, ["evaluate", "--data", "scenes", "--out", "eval_two", *EVALUATE], nproc=2)
    for run in (one, two):
        assert run.returncode == 1, run.stderr[-2000:]
        assert "1 of 12 items could not be read" in run.stderr
    reference = (data / "eval_one" / "records.jsonl").read_bytes()
    assert len(reference.splitlines()) == 11
    assert (data / "eval_two" / "records.jsonl").read_bytes() == reference
    assert (data / "eval_two" / "results.md").read_text() == (data / "eval_one" / "results.md").read_text()

    killed = vitflow(data, ["evaluate", "--data", "scenes", "--out", "eval_killed", *EVALUATE], nproc=2,
                     script=FAULT_SCRIPT, FAULT="kill", FAULT_RANK="1")  # fmt: skip
    assert killed.returncode != 0
    report = killed.stdout + killed.stderr
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s+exitcode\s*:\s*-9", report), report[-3000:]
    finished = sorted((data / "eval_killed" / "chunks").glob("chunk_*.json"))
    assert 1 <= len(finished) < 6 and not (data / "eval_killed" / "records.jsonl").exists()
    resumed = vitflow(data, ["evaluate", "--data", "scenes", "--out", "eval_killed", *EVALUATE])  # 1 process
    assert resumed.returncode == 1, resumed.stderr[-2000:]
    assert (data / "eval_killed" / "records.jsonl").read_bytes() == reference
    chunks = [json.loads(p.read_text()) for p in (data / "eval_killed" / "chunks").glob("chunk_*.json")]
    assert {c["world_size"] for c in chunks} == {1, 2}  # the killed run's chunks were kept, not redone


def test_a_rank_that_fails_stops_every_rank_naming_the_rank_and_the_item(data):
    failed = vitflow(data, ["evaluate", "--data", "scenes", "--out", "eval_failed", *EVALUATE], nproc=2,
                     script=FAULT_SCRIPT, FAULT="raise", FAULT_RANK="1")  # fmt: skip
    assert failed.returncode != 0
    first_item = json.loads((data / "scenes" / "boxes.json").read_text())["scenes"][2]["id"]
    expected = (f"vitflow: error: rank 1 failed on chunk 1 (items 3-4, starting with {first_item}:0): "
                "RuntimeError: injected fault; finished chunks are kept, rerun the same command to resume")
    assert expected in failed.stderr, failed.stderr[-3000:]
    assert "vitflow/" not in failed.stderr  # no traceback through vitflow (torchrun prints its own)


def test_bank_build_under_torchrun_equals_one_process_and_records_its_layout(data):
    args = ["bank", "build", "--data", "scenes/images", "--batch-size", "2", "--chunk", "4", "--quiet"]
    one = vitflow(data, [*args, "--out", "one.bank"])
    two = vitflow(data, [*args, "--out", "two.bank"], nproc=2)
    for run in (one, two):
        assert run.returncode == 1, run.stderr[-2000:]
        assert "1 of 12 images could not be read and were left out" in run.stderr
    first, second = MemoryBank.load(data / "one.bank"), MemoryBank.load(data / "two.bank")
    assert len(first) == 11 and torch.equal(first.features, second.features)
    assert torch.equal(first.labels, second.labels)
    layout = second.metadata["layout"]
    assert layout["world_size"] == 2 and layout["chunks"] == 3 and layout["chunk_images"] == 4
    assert [s["rank"] for s in layout["shards"]] == [0, 1, 0]
    paths = sorted(p.relative_to(data) for p in (data / "scenes" / "images").rglob("*.png"))
    broken = [i for i, p in enumerate(paths) if p.name == "scene_000005.png"][0]  # ImageFolder order
    assert [s["rows"] for s in layout["shards"]] == [4 - (c == broken // 4) for c in range(3)]
    assert not (data / "two.bank.parts").exists()
