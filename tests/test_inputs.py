"""Inputs from the real world: every image Pillow can open is explained, every other file is
reported in one line while the run goes on; the loader, targets and bank files under fuzzing."""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vitflow.cli import main
from vitflow.data.images import ImageLoadError, read_image
from vitflow.targets import BankError, ClassTarget, MemoryBank

RNG = np.random.default_rng(0)


def _pixels(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _exif_rotated_jpeg(path: Path) -> None:
    """A 40x20 JPEG whose EXIF says 'rotate 90 degrees' (orientation 6): upright it is 20x40."""
    image = Image.fromarray(_pixels(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes())


def _bomb_png(path: Path, side: int = 30000) -> None:
    """A tiny PNG file whose header declares side x side pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", side, side)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the IHDR chunk's CRC
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """20 real-world files: odd modes and sizes, and the broken ones. Returns the folder and, for
    every file that must fail, a phrase its error line contains."""
    root = tmp_path_factory.mktemp("mixed")
    d = root / "photos"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    (d / "folder.png").mkdir()  # a directory named like an image
    Image.fromarray(_pixels(60, 80)).save(d / "rgb.png")
    Image.fromarray(_pixels(60, 80)).convert("L").save(d / "gray.png")
    Image.fromarray(_pixels(60, 80)).convert("P").save(d / "palette.png")
    rgba = np.dstack([_pixels(60, 80), np.where(np.arange(80) < 40, 0, 255)[None].repeat(60, 0)]).astype(
        np.uint8
    )
    Image.fromarray(rgba, "RGBA").save(d / "transparent.png")
    Image.fromarray(_pixels(60, 80)).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((RNG.integers(0, 65535, (50, 50))).astype(np.uint16)).save(d / "deep16.png")
    _exif_rotated_jpeg(d / "exif.jpg")
    Image.fromarray(_pixels(1, 1)).save(d / "one_pixel.png")
    Image.fromarray(_pixels(2, 2000)).save(d / "very_wide.png")
    frames = [Image.fromarray(_pixels(30, 30)) for _ in range(3)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(_pixels(40, 40)).save(d / "a" / "same name.png")
    Image.fromarray(_pixels(40, 40)).save(d / "b" / "same name.png")
    Image.fromarray(_pixels(40, 40)).save(d / "ünïcødé 名前.webp")
    Image.fromarray(_pixels(40, 40)).convert("1").save(d / "bilevel.bmp")
    Image.fromarray(_pixels(40, 40)).save(d / "tiff.tif")
    good = (d / "rgb.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    _bomb_png(d / "bomb.png")
    (d / "notes.txt").write_text("skipped: not an image suffix inside a folder")
    failing = {
        "truncated.png": "unreadable or corrupt image",
        "empty.jpg": "not an image file Pillow can read",
        "text.png": "not an image file Pillow can read",
        "bomb.png": "900,000,000 pixels is more than the limit",
    }
    return d, failing


def test_a_folder_of_real_world_files(mixed_folder, tmp_path, capsys):
    folder, failing = mixed_folder
    out = tmp_path / "out"
    code = main(["explain", str(folder), "--out", str(out), "--batch-size", "3", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1  # something failed
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("vitflow: error:")]
    assert len(errors) == len(failing) + 1
    for name, phrase in failing.items():
        assert any(name in line and phrase in line for line in errors), name
    assert "--max-pixels 900000000" in next(line for line in errors if "bomb.png" in line)
    assert errors[-1] == "vitflow: error: 4 of 19 images failed (15 explained)"
    manifests = {
        p.parent.relative_to(out).as_posix(): json.loads(p.read_text()) for p in out.rglob("manifest.json")
    }
    assert len(manifests) == 15
    assert {"a/same name", "b/same name", "ünïcødé 名前"} <= set(manifests)
    notes = {name: " ".join(m["input_notes"]) for name, m in manifests.items()}
    assert "composited on white" in notes["transparent"]
    assert "16-bit" in notes["deep16"]
    assert "EXIF orientation" in notes["exif"]
    assert "first frame" in notes["animated"]
    assert "CMYK" in notes["cmyk"]
    assert notes["rgb"] == ""
    assert "vitflow: note:" in captured.err and "first frame" in captured.err
    assert not list(out.rglob("*.tmp")) and not (out / "bomb").exists()


def test_the_bomb_is_allowed_when_asked(tmp_path):
    _bomb_png(tmp_path / "bomb.png", side=3000)
    with pytest.raises(ImageLoadError, match="9,000,000 pixels is more than the limit of 1,000"):
        read_image(tmp_path / "bomb.png", max_pixels=1000)
    with pytest.raises(ImageLoadError, match="unreadable or corrupt"):  # allowed, then its broken data shows
        read_image(tmp_path / "bomb.png", max_pixels=None)


def test_exif_orientation_is_applied(tmp_path):
    _exif_rotated_jpeg(tmp_path / "r.jpg")
    loaded = read_image(tmp_path / "r.jpg")
    assert loaded.image.size == (20, 40) and loaded.image.mode == "RGB"


def test_transparency_is_composited_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    loaded = read_image(tmp_path / "clear.png")
    assert np.asarray(loaded.image).min() == 255 and "white" in loaded.notes[0]


def test_sixteen_bit_samples_keep_their_range(tmp_path):
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(tmp_path / "d.png")
    assert np.asarray(read_image(tmp_path / "d.png").image)[0, :, 0].tolist() == [0, 255]


def test_commands_refuse_bad_inputs_in_one_line(tmp_path, capsys):
    (tmp_path / "bad.bank").write_bytes(b"\x00" * 64)
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    (tmp_path / "empty").mkdir()
    cases = [
        (["bank", "info", str(tmp_path / "bad.bank")], "memory bank"),
        (["bank", "info", str(tmp_path / "none.bank")], "no such file"),
        (["explain", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "no images found"),
        (
            ["explain", str(tmp_path), "--bank", str(tmp_path / "bad.bank"), "--out", str(tmp_path / "o")],
            "memory bank",
        ),
        (
            [
                "explain",
                str(tmp_path),
                "--checkpoint",
                str(tmp_path / "bad.pth"),
                "--out",
                str(tmp_path / "o"),
            ],
            "--checkpoint needs --model",
        ),
        (
            [
                "explain",
                str(tmp_path),
                "--model",
                "vit_tiny_patch16_224",
                "--checkpoint",
                str(tmp_path / "bad.pth"),
                "--out",
                str(tmp_path / "o"),
            ],
            "cannot be read",
        ),
        (
            ["explain", str(tmp_path), "--img-size", "64", "--out", str(tmp_path / "o")],
            "--img-size needs --model",
        ),
        (
            ["explain", str(tmp_path), "--figure-blocks", "1,x", "--out", str(tmp_path / "o")],
            "--figure-blocks",
        ),
        (["explain", str(tmp_path), "--cmap", "nonsense", "--out", str(tmp_path / "o")], "nonsense"),
        (["evaluate", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e")], "no such folder"),
        (
            ["evaluate", "--data", str(tmp_path), "--methods", "daam,magic", "--out", str(tmp_path / "e")],
            "unknown method 'magic'",
        ),
        (
            ["bank", "build", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "b.bank")],
            "no images found",
        ),
        (["demo", "--out", str(tmp_path / "bad.pth" / "x")], "cannot write scenes"),
        (["scenes", "--out", str(tmp_path / "bad.pth" / "x"), "--n", "1"], "bad.pth"),
    ]
    for args, phrase in cases:
        assert main(args) == 2, args
        text = capsys.readouterr().err
        err = [line for line in text.splitlines() if not line.startswith("vitflow: note:")]
        assert "Traceback" not in text
        assert len(err) == 1 and err[0].startswith("vitflow: error:") and phrase in err[0], (args, err)
    assert not (tmp_path / "b.bank").exists()


def test_a_missing_matplotlib_costs_one_picture_not_the_run(tmp_path, monkeypatch, capsys):
    assert main(["scenes", "--out", str(tmp_path / "s"), "--n", "2", "--size", "96"]) == 0
    for name in ("matplotlib", "matplotlib.pyplot"):  # a None entry makes `import` fail as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    code = main(
        [
            "evaluate",
            "--data",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "e"),
            "--quiet",
            "--methods",
            "daam",
            "--metrics",
            "energy",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "vitflow: note: per_block.png not drawn: it needs matplotlib" in captured.err
    assert (tmp_path / "e" / "results.md").exists() and not (tmp_path / "e" / "per_block.png").exists()
    assert main(["explain", str(tmp_path / "s"), "--figure", "--out", str(tmp_path / "x")]) == 2
    assert "--figure needs matplotlib" in capsys.readouterr().err


# -- fuzzing -----------------------------------------------------------------------------------

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"]
FORMATS = {
    "PNG": ("1", "L", "P", "RGB", "RGBA", "LA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "GIF": ("L", "P"),
    "TIFF": ("1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB"),
}


@st.composite
def image_files(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    array = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array).convert("RGBA" if mode in ("RGBA", "LA") else "RGB")
    if mode in ("I;16", "I", "F"):
        image = Image.fromarray(
            array[..., 0].astype(np.uint16 if mode == "I;16" else np.int32) * 200
        ).convert(mode)
    else:
        image = image.convert(mode)
    buffer = io.BytesIO()
    kwargs = {}
    orientation = draw(st.sampled_from([None, 1, 3, 6, 8]))
    if orientation and fmt in ("JPEG", "PNG", "WEBP"):  # (TIFF: Pillow handles its orientation tag itself)
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, format=fmt, **kwargs)
    data = buffer.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, len(data) - 1)))
    size = (height, width) if orientation not in (6, 8) or "exif" not in kwargs else (width, height)
    return (data if cut is None else data[:cut]), size, cut is not None


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=image_files())
def test_loader_gives_rgb_of_the_right_size_or_one_clear_error(case, tmp_path):
    data, (height, width), truncated = case
    path = tmp_path / "fuzz.img"
    path.write_bytes(data)
    try:
        loaded = read_image(path)
    except ImageLoadError as error:
        assert truncated, f"an intact file failed: {error}"
        assert str(error).startswith(str(path)) and "\n" not in str(error)
        return
    assert loaded.image.mode == "RGB"
    if not truncated:
        assert loaded.image.size == (width, height)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_are_an_image_or_one_clear_error(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("bytes") / "x.png"
    path.write_bytes(data)
    try:
        assert read_image(path).image.mode == "RGB"
    except ImageLoadError as error:
        assert "\n" not in str(error) and str(path) in str(error)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    target=st.one_of(
        st.none(),
        st.integers(-5, 12),
        st.lists(st.integers(-2, 12), max_size=6),
        st.floats(),
        st.text(max_size=3),
        st.booleans(),
    ),
    batch=st.integers(1, 4),
)
def test_targets_resolve_or_refuse_with_a_message(target, batch):
    logits = torch.randn(batch, 10)
    try:
        labels = ClassTarget(target).resolve(logits)
    except (TypeError, ValueError) as error:
        assert str(error)
        return
    assert labels.shape == (batch,) and labels.dtype == torch.int64
    assert ((labels >= 0) & (labels < 10)).all()
    if target is None:
        assert torch.equal(labels, logits.argmax(1))
    elif isinstance(target, int) and not isinstance(target, bool):
        assert (labels == target).all()
    else:
        assert labels.tolist() == list(target)


@pytest.fixture(scope="module")
def bank_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("bank") / "b.bank"
    features = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    MemoryBank(features, torch.tensor([0, 1, 2, 0, 1, 2]), ["a", "b", "c"]).save(path)
    return path.read_bytes()


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cut=st.integers(0, 2000), flip=st.integers(0, 2000))
def test_damaged_bank_files_load_or_refuse_with_a_bank_error(bank_bytes, cut, flip, tmp_path_factory):
    data = bytearray(bank_bytes[: max(cut, 1)] if cut < len(bank_bytes) else bank_bytes)
    if flip < len(data):
        data[flip] ^= 0x5A
    path = tmp_path_factory.mktemp("damaged") / "b.bank"
    path.write_bytes(bytes(data))
    try:
        bank = MemoryBank.load(path)
    except BankError as error:
        assert "memory bank" in str(error) and "\n" not in str(error).strip()
        return
    assert bank.features.shape[1] == 4 and len(bank) == len(bank.labels)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_drawn_on_a_terminal_and_cleared_before_report_lines():
    from vitflow.runs.progress import Progress

    stream = _Terminal()
    bar = Progress(4, "explain", stream=stream)
    bar.update(2)
    bar.update(2)
    bar.clear()
    stream.write("vitflow: error: x\n")
    bar.close()
    text = stream.getvalue()
    drawn = text[: text.index("vitflow: error")]
    assert "explain:" in drawn and "2/4" in drawn and "|#####" in drawn  # a bar, with counts
    assert drawn.rstrip(" ").endswith("\r")  # the error line starts where the bar was erased
    assert "4/4" in text[text.index("vitflow: error"):]  # closed: drawn once more, complete
    log = io.StringIO()  # a log file or a pipe: no bar at all
    quiet = Progress(4, "explain", stream=log)
    quiet.update(4)
    quiet.close()
    assert not quiet.enabled and log.getvalue() == ""


def test_progress_rates_only_work_done_after_the_first_batch_and_this_run():
    """The model's warm-up (the first batch) and an earlier run's images count as done but not
    toward the rate: the bar starts with them as its initial count."""
    from vitflow.runs.progress import Progress

    bar = Progress(1000, "explain", stream=_Terminal())
    bar.skip(400)  # done by an earlier run
    assert bar._bar is None  # nothing drawn, no clock, before work is done
    bar.update(8)  # the first batch, warm-up included
    assert bar._bar.initial == 408 and bar._bar.n == 408 and bar._bar.total == 1000
    bar.update(50)
    assert bar._bar.n == 458 and bar.finished == 458
    bar.close()
