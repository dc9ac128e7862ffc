"""One process at dataset scale: DataLoader workers and writer threads change nothing in the
outputs, saved maps read back exactly, runs resume chunk by chunk, and the bank merge streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vitflow import DAAM, load_maps
from vitflow.cli import main
from vitflow.data.scenes import write_scenes
from vitflow.models.demo import load_demo_model
from vitflow.runs.explain import explain_files


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale")
    write_scenes(root / "scenes", 7, seed=2, size=96)
    (root / "scenes" / "images" / "aaa_broken.png").write_bytes(b"\x89PNG broken")
    return root / "scenes" / "images"


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".vitflow" not in p.parts}  # fmt: skip


def test_workers_and_writer_threads_do_not_change_a_single_byte(scenes, tmp_path):
    model, preprocessing = load_demo_model()
    run = dict(model=model, preprocessing=preprocessing, inputs=[scenes], batch_size=3)
    serial = explain_files(**run, out=tmp_path / "serial", workers=0, writers=0)
    pooled = explain_files(**run, out=tmp_path / "pooled", workers=2, writers=3)
    assert serial.summary() == pooled.summary() == "1 of 8 images failed (7 explained)"
    assert serial.failures == pooled.failures and "aaa_broken.png" in serial.failures[0]
    assert [m["image"] for m in serial.manifests] == [m["image"] for m in pooled.manifests]  # input order
    first, second = _outputs(tmp_path / "serial"), _outputs(tmp_path / "pooled")
    # final.jpg, viewer.html, manifest.json; index.html and the map shard
    assert len(first) == 7 * 3 + 2 and first == second
    assert pooled.timings["model"] > 0 and set(pooled.timings) == {"read", "model", "write"}


def test_saved_maps_are_the_library_maps_with_their_ids_logits_and_targets(scenes, tmp_path):
    model, preprocessing = load_demo_model()
    report = explain_files(model, preprocessing, [scenes], tmp_path / "run", batch_size=2, chunk_images=4,
                           save_maps="float32", images=False)  # fmt: skip
    assert report.explained == 7 and report.manifests == []
    assert not list((tmp_path / "run").rglob("*.png"))  # maps only
    shards = sorted((tmp_path / "run" / "maps").glob("chunk_*.safetensors"))
    assert len(shards) == 2  # 8 files in chunks of 4; the broken one leaves 3 rows in the first
    saved = load_maps(tmp_path / "run")
    source = Path(saved.images[0])
    assert len(saved) == 7 and saved.ids[0] == f"{source.parent.name}/{source.stem}"  # OUT/<id>/
    row = saved.row(saved.ids[4])
    image = Image.open(saved.images[row]).convert("RGB")
    with DAAM(model) as daam:
        alone = daam(preprocessing(image)[None])
    assert torch.allclose(saved.result.maps[row], alone.maps[0], rtol=1e-5, atol=1e-7)
    assert torch.allclose(saved.result.logits[row], alone.logits[0], rtol=1e-5, atol=1e-6)
    assert int(saved.result.target[row]) == int(alone.target[0])
    assert saved.result.final.shape == (7, 12, 12) and saved.metadata["rho"] == "relu"
    half = explain_files(model, preprocessing, [scenes], tmp_path / "half", batch_size=2, chunk_images=4,
                         save_maps="float16", images=False)  # fmt: skip
    assert half.explained == 7
    halved = load_maps(tmp_path / "half" / "maps")
    assert halved.result.maps.dtype == torch.float16
    torch.testing.assert_close(halved.result.maps.float(), saved.result.maps, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="no map shards found"):
        load_maps(tmp_path)
    with pytest.raises(KeyError, match="no maps saved for 'nope'"):
        saved.row("nope")


def test_a_shard_buffer_holds_the_batches_as_one_result_in_the_shard_dtype():
    from vitflow.outputs.maps import ShardBuffer

    model, preprocessing = load_demo_model()
    x = torch.stack([torch.randn(3, 96, 96) for _ in range(5)])
    with DAAM(model) as daam:
        parts = [daam(x[:2]), daam(x[2:4]), daam(x[4:])]
    buffer = ShardBuffer(8, torch.float16)
    for k, part in enumerate(parts):
        buffer.add(part, [f"id{k}_{i}" for i in range(len(part))], [f"img{k}_{i}" for i in range(len(part))])
    joined = buffer.result()
    assert len(joined) == len(buffer) == 5 and buffer.ids[2] == "id1_0" and buffer.images[4] == "img2_0"
    for name in ("maps", "block_maps", "relevance"):
        expected = torch.cat([getattr(p, name) for p in parts]).to(torch.float16)
        assert getattr(joined, name).dtype == torch.float16 and torch.equal(getattr(joined, name), expected)
    for name in ("logits", "target", "score"):
        assert torch.equal(getattr(joined, name), torch.cat([getattr(p, name) for p in parts])), name
    assert joined.grid == parts[0].grid and joined.prefix_tokens == parts[0].prefix_tokens
    buffer.add(parts[0], ["a", "b"], ["a", "b"])  # 7 of 8 rows
    with pytest.raises(ValueError, match="a shard of 8 rows cannot take 9"):
        buffer.add(parts[0], ["c", "d"], ["c", "d"])


def test_explain_resumes_by_chunk_and_redoes_what_changed(scenes, tmp_path):
    model, preprocessing = load_demo_model()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k, path in enumerate(sorted(scenes.rglob("scene_*.png"))[:6]):
        (inputs / f"{k}.png").write_bytes(path.read_bytes())
    calls = []

    def counting(image):
        calls.append(1)
        return preprocessing(image)

    from dataclasses import replace

    counted = replace(preprocessing, transform=counting)
    first = explain_files(model, counted, [inputs], tmp_path / "out", batch_size=2, chunk_images=2)
    # one call per image, and one probe per image size that finds where the crop lies in the photo
    assert first.explained == 6 and len(calls) == 6 + 1
    calls.clear()
    again = explain_files(model, counted, [inputs], tmp_path / "out", batch_size=2, chunk_images=2)
    assert again.summary() == "explained 6 of 6 images; 6 done by an earlier run" and calls == []
    (inputs / "3.png").write_bytes((inputs / "0.png").read_bytes())  # an edited file: its chunk is redone
    edited = explain_files(model, counted, [inputs], tmp_path / "out", batch_size=2, chunk_images=2)
    assert len(calls) == 2 + 1 and edited.resumed == 4
    manifest = json.loads((tmp_path / "out" / "3" / "manifest.json").read_text())
    reference = json.loads((tmp_path / "out" / "0" / "manifest.json").read_text())
    final, expected = manifest["blocks"][-1]["map"], reference["blocks"][-1]["map"]  # the new content
    assert final["argmax"] == expected["argmax"] and final["sum"] == pytest.approx(expected["sum"], rel=1e-5)
    calls.clear()
    explain_files(model, counted, [inputs], tmp_path / "out", batch_size=2, chunk_images=2, rho="identity")
    assert len(calls) == 6 + 1  # other settings: everything again


def test_a_damaged_run_folder_costs_only_its_chunk(scenes, tmp_path, capsys):
    """A chunk record cut short, a map shard cut short, a state file of garbage: each is named in
    one note line, its chunk (or the run) is done again, and the outputs equal a clean run's."""
    args = ["explain", str(scenes), "--out", str(tmp_path / "out"), "--batch-size", "2", "--chunk", "2",
            "--quiet", "--workers", "0"]  # fmt: skip
    assert main(args) == 1  # the broken file
    clean = _outputs(tmp_path / "out")
    ledger = tmp_path / "out" / ".vitflow"
    records = sorted(ledger.glob("chunk_*.json"))
    assert len(records) == 4
    records[1].write_text(records[1].read_text()[:20])  # a record cut short
    shard = tmp_path / "out" / "maps" / "chunk_000002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-64])  # a shard cut short
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"vitflow: note: {records[1]} is damaged; its chunk is run again" in err
    assert f"vitflow: note: {shard} is missing or damaged; its chunk is run again" in err
    assert _outputs(tmp_path / "out") == clean
    (ledger / "state.json").write_text("{not json")
    assert main(args) == 1
    state = ledger / "state.json"
    assert f"vitflow: note: {state} is damaged; the run starts afresh" in capsys.readouterr().err
    assert _outputs(tmp_path / "out") == clean

    assert main(["scenes", "--out", str(tmp_path / "s"), "--n", "4", "--size", "96"]) == 0
    evaluate = ["evaluate", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "e"), "--methods", "daam",
                "--metrics", "energy", "--per-block-metrics", "", "--quiet", "--workers", "0", "--chunk", "2",
                "--batch-size", "2"]  # fmt: skip
    assert main(evaluate) == 0
    results = (tmp_path / "e" / "results.json").read_text()
    chunk = sorted((tmp_path / "e" / "chunks").glob("chunk_*.json"))[0]
    chunk.write_text("")
    capsys.readouterr()
    assert main(evaluate) == 0
    assert f"vitflow: note: {chunk} is damaged; its chunk is run again" in capsys.readouterr().err
    assert (tmp_path / "e" / "results.json").read_text() == results
    (tmp_path / "e" / "chunks" / "state.json").write_bytes(b"\x00\x01")
    assert main(evaluate) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("vitflow: error: ") and "state.json is damaged" in error and "\n" not in error


def test_evaluate_refuses_to_mix_runs_with_other_settings(tmp_path, capsys):
    assert main(["scenes", "--out", str(tmp_path / "s"), "--n", "2", "--size", "96"]) == 0
    args = ["evaluate", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "e"), "--methods", "daam",
            "--metrics", "energy", "--per-block-metrics", "", "--quiet", "--workers", "0"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--batch-size", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("vitflow: error: ")
    assert "holds a evaluate run with other settings (batch_size" in error
    assert "\n" not in error


def test_scale_options_are_checked_in_one_line(scenes, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["explain", str(scenes), "--out", out, "--no-images", "--quiet"]) == 1  # the broken file
    assert not list(Path(out).rglob("*.jpg")) and load_maps(out).result.maps.dtype == torch.float16
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["explain", str(scenes), "--out", out, "--workers", "-1"])
    assert exit_.value.code == 2
    assert "must be 0 (decode in the main process) or more" in capsys.readouterr().err
    assert main(["explain", str(scenes), "--out", out, "--save-maps", "float16", "--no-images", "--quiet",
                 "--workers", "1", "--chunk", "3"]) == 1  # fmt: skip  (the broken file)
    assert load_maps(out).result.maps.dtype == torch.float16


def test_bank_merge_streams_chunks_into_a_bank_equal_to_saving_it_whole(tmp_path):
    from safetensors.torch import save_file

    from vitflow.data.folders import LabelledImages
    from vitflow.runs.bank_build import _merge_chunks
    from vitflow.targets import MemoryBank

    torch.manual_seed(0)
    rows = [5, 0, 7, 3]  # a chunk of unreadable images only stores no rows
    chunks, features, index, start = [], [], [], 0
    for k, n in enumerate(rows):
        f = torch.nn.functional.normalize(torch.randn(n, 16), dim=1).half() if n else torch.empty(0, 0).half()
        i = torch.arange(start, start + n, dtype=torch.int64) + k  # leave a gap: skipped images
        start += n + 1
        chunks.append(tmp_path / f"chunk_{k}.safetensors")
        ranks = {"rank": str(k % 2), "world_size": "2"}
        save_file({"features": f, "index": i}, str(chunks[-1]), metadata=ranks)
        if n:
            features.append(f)
            index.append(i)
    paths = [Path(f"{j}.png") for j in range(start + 4)]
    labels = [j % 3 for j in range(len(paths))]
    images = LabelledImages(paths, labels, ["a", "b", "c"])
    _merge_chunks(chunks, images, tmp_path / "m.bank", {"model": "m"}, {"world_size": 2})
    bank = MemoryBank.load(tmp_path / "m.bank")
    expected = torch.cat(features)
    assert bank.features.dtype == torch.float16 and torch.equal(bank.features, expected)
    assert torch.equal(bank.labels, torch.tensor(labels)[torch.cat(index)])
    assert bank.metadata["skipped_images"] == len(paths) - 15
    assert [s["rows"] for s in bank.metadata["layout"]["shards"]] == rows
    whole = MemoryBank(expected, bank.labels, ["a", "b", "c"], {"model": "m"})
    whole.save(tmp_path / "w.bank")
    assert torch.equal(MemoryBank.load(tmp_path / "w.bank").features, bank.features)


def test_evaluate_scores_saved_maps_without_running_the_model_for_them(tmp_path, capsys):
    assert main(["scenes", "--out", str(tmp_path / "s"), "--n", "6", "--size", "96", "--seed", "4"]) == 0
    assert main(["explain", str(tmp_path / "s" / "images"), "--out", str(tmp_path / "run"), "--save-maps",
                 "--no-images", "--quiet"]) == 0  # fmt: skip  (each image's predicted class)
    args = ["evaluate", "--methods", "daam", "--metrics", "energy,pointing_game", "--per-block-metrics", "",
            "--quiet", "--workers", "0"]  # fmt: skip
    run = ["--data", str(tmp_path / "s"), "--out", str(tmp_path / "e"), "--maps", str(tmp_path / "run")]
    assert main([*args, *run]) == 0
    records = [json.loads(line) for line in (tmp_path / "e" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(set(r["scores"]) == {"daam", "saved"} for r in records)
    right = [r for r in records if r["correct"]]  # predicted = true class: the saved map is DAAM's map
    assert right, "the demo ViT gets some of these scenes right"
    for r in right:
        assert r["scores"]["saved"]["energy"] == pytest.approx(r["scores"]["daam"]["energy"], rel=1e-4)
    assert "| saved |" in (tmp_path / "e" / "results.md").read_text()
    shard = sorted((tmp_path / "run" / "maps").glob("*.safetensors"))[0]
    capsys.readouterr()
    assert main(["scenes", "--out", str(tmp_path / "more"), "--n", "7", "--size", "96", "--seed", "4"]) == 0
    more = ["--data", str(tmp_path / "more"), "--out", str(tmp_path / "e2"), "--maps", str(shard)]
    assert main([*args, *more]) == 2  # a 7th scene, and only one shard of the run
    error = capsys.readouterr().err
    assert "vitflow: error: the saved maps have no map of" in error and "leave out --maps" in error


def test_atomic_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """mkstemp makes 0600 files; a written output must be readable like any other file."""
    import os
    import stat

    from vitflow.atomic import write_bytes_atomic

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    written = write_bytes_atomic(tmp_path / "out" / "atomic.bin", b"x")
    assert stat.S_IMODE(os.stat(written).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_a_chunk_is_on_the_disk_before_its_record_and_no_image_waits_for_fsync(scenes, tmp_path, monkeypatch):
    """A run syncs each chunk's files at once (``sync_all``) after its bundles and map shard are
    written and before its record says it is done (so a power cut cannot leave a recorded chunk
    whose files are not on the disk); no bundle calls ``fsync`` on the way."""
    import os

    import vitflow.runs.explain as explain
    from vitflow.atomic import CAN_SYNC_ALL, sync_all

    if not CAN_SYNC_ALL:
        pytest.skip("no sync() on this platform: bundles are written durably one by one")
    out = tmp_path / "out"
    seen, synced = [], []
    real_fsync = os.fsync

    def fsync(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else str(fd))
        return real_fsync(fd)

    def counting_sync(path):
        records = sorted(p.name for p in (out / ".vitflow").glob("chunk_*.json"))
        shards = sorted(p.name for p in (out / "maps").glob("chunk_*.safetensors"))
        manifests = len(list(out.rglob("manifest.json")))
        synced.append((len(records), shards, manifests))
        sync_all(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(explain, "sync_all", counting_sync)
    model, preprocessing = load_demo_model()
    report = explain_files(model, preprocessing, [scenes], out, batch_size=2, chunk_images=4)
    assert report.explained == 7
    # chunks of 4 inputs (the broken file is one of them): 3, then 4 images
    assert synced == [(0, ["chunk_000000.safetensors"], 3),
                      (1, ["chunk_000000.safetensors", "chunk_000001.safetensors"], 7)]  # fmt: skip
    assert not [name for name in seen if "manifest" in name or name.endswith((".jpg", ".html"))]
    assert any(".vitflow" in name for name in seen)  # the records themselves are written durably


@pytest.mark.parametrize(("cores", "ranks", "cpu", "gpu"), [(2, 1, (0, 0), (1, 2)), (4, 1, (0, 0), (3, 2)),
                                                         (16, 1, (3, 3), (8, 8)), (16, 4, (0, 0), (3, 2))])
def test_default_decoders_and_writers_leave_a_cpu_models_cores_to_it(monkeypatch, cores, ranks, cpu, gpu):
    """On the CPU the model's threads use every core: no decoding process and no writer thread up
    to 5 cores a rank, one per 4 beyond 2; beside an accelerator the rank's cores decode (less one)
    and write (half, at least 2)."""
    from vitflow.data import loader

    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda _: set(range(cores)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    assert (loader.default_workers("cpu"), loader.default_writers("cpu")) == cpu
    assert (loader.default_workers("cuda"), loader.default_writers("cuda")) == gpu
    assert loader.default_writers() == gpu[1]  # no device given: as beside an accelerator
