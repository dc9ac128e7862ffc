"""Animations, figures, the HTML viewer, notebook display and progress output."""

import base64
import io
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from vitflow.cli import main
from vitflow.data.scenes import generate_scene
from vitflow.explainer.result import DAAMResult
from vitflow.render import show, viewer_html
from vitflow.render.figure import flow_figure, save_figure
from vitflow.render.video import write_mp4

L = 5


def moving_spot_maps(blocks=L, grid=(6, 6)):
    """Accumulated maps whose hot spot moves from block to block, and their block maps."""
    block_maps = torch.zeros(blocks, *grid)
    for b in range(blocks):
        block_maps[b, b % grid[0], (2 * b) % grid[1]] = 1.0 + b
    return block_maps.cumsum(0), block_maps


def fake_result(batch=2):
    maps, block_maps = moving_spot_maps()
    return DAAMResult(
        block_maps=block_maps.expand(batch, -1, -1, -1),
        maps=maps.expand(batch, -1, -1, -1),
        relevance=torch.zeros(batch, L, 37),
        logits=torch.randn(batch, 4),
        target=torch.tensor([1] * batch),
        score=torch.zeros(batch),
        prefix_tokens=1,
        grid=(6, 6),
    )


IMAGE = generate_scene(0, 0, size=96).image


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`vitflow explain --mp4 --figure --gif` on two images with timm's small test ViT (160 px, 6 blocks)."""
    root = tmp_path_factory.mktemp("visual")
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_file(model.state_dict(), root / "w.safetensors")
    Image.fromarray(IMAGE).save(root / "one.png")
    Image.fromarray(IMAGE[::-1].copy()).save(root / "two.png")
    args = ["explain", str(root / "one.png"), str(root / "two.png"), "--model", "test_vit",
            "--checkpoint", str(root / "w.safetensors"), "--out", str(root / "out"), "--mp4", "--figure",
            "--gif", "--figure-blocks", "1,3,6", "--display-size", "160"]  # fmt: skip
    return root, args


def _explain_run(run, capsys, extra=()):
    code = main([*run[1], *extra])
    return code, capsys.readouterr()


def test_gif_and_mp4_have_one_frame_per_block_that_change_as_the_maps_do(run, capsys):
    code, captured = _explain_run(run, capsys)
    assert code == 0
    assert "explained 2 of 2 images" in captured.out
    folder = run[0] / "out" / "one"
    gif = Image.open(folder / "flow.gif")
    assert gif.n_frames == 6 and gif.size == (160, 160) and gif.info["loop"] == 0
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.int16))
    assert all(np.abs(a - b).mean() > 0.5 for a, b in zip(frames, frames[1:], strict=False))
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(folder / "flow.mp4"))
    meta = reader.__next__()
    video = [np.frombuffer(f, np.uint8).reshape(160, 160, 3).astype(np.int16) for f in reader]
    assert meta["size"] == (160, 160)
    assert len(video) == 6 + 2  # one frame per block, the last held three times
    assert np.abs(video[0] - video[5]).mean() > 0.5 and np.abs(video[5] - video[7]).mean() < 0.5
    # the video shows what the GIF shows (up to compression)
    assert np.abs(video[0] - frames[0]).mean() < 12


def test_quiet_silences_the_progress_bar(run, capsys):
    code, captured = _explain_run(run, capsys, extra=["--quiet"])
    assert code == 0 and "explain:" not in captured.err


def test_figure_panels_and_formats(run, capsys, tmp_path):
    _explain_run(run, capsys)
    folder = run[0] / "out" / "one"
    assert (folder / "figure.pdf").read_bytes()[:4] == b"%PDF"
    assert b"<svg" in (folder / "figure.svg").read_bytes()[:500]
    assert Image.open(folder / "figure.png").width > 400
    maps, block_maps = moving_spot_maps()
    fig = flow_figure(IMAGE, maps, block_maps, blocks=[1, 3, 5], mode="global")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 1 + 3 + 3  # input, accumulated and per-block rows for three blocks
    assert [ax.get_title() for ax in shown[:4]] == ["input", "accumulated, block 1", "block 3", "block 5"]
    many = flow_figure(IMAGE, *moving_spot_maps(blocks=32), max_columns=9)
    assert len([ax for ax in many.axes if ax.images]) == 1 + 32 + 32
    written = save_figure(fig, tmp_path / "fig", formats=("png", "svg"))
    assert [p.name for p in written] == ["fig.png", "fig.svg"]
    with pytest.raises(ValueError, match="blocks must be numbers from 1 to 5"):
        flow_figure(IMAGE, maps, blocks=[0, 6])


class _Balance(HTMLParser):
    VOID = {"meta", "input", "br", "img", "line", "polyline", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_viewer_is_one_valid_file_that_references_nothing_remote(run, capsys):
    _explain_run(run, capsys)
    out = run[0] / "out"
    page = (out / "one" / "viewer.html").read_text()
    checker = _Balance()
    checker.feed(page)
    assert checker.errors == [] and checker.stack == []
    assert page.startswith("<!DOCTYPE html>")
    code = re.sub(r"data:[a-z/+-]+;base64,[A-Za-z0-9+/=]+", "", page)  # embedded photo and maps are local
    assert page.count("data:image/jpeg;base64,") == 1  # the photo, once; the browser draws the maps
    assert not re.search(r"(https?:)?//[a-z]", code)
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    index = (out / "index.html").read_text()
    assert '"viewer": "one/viewer.html"' in index and '"thumbnail": "two/final.jpg"' in index


@pytest.mark.parametrize(("size", "css"), [((224, 224), 512), ((224, 168), 384), ((576, 768), 768),
                                           ((100, 1200), 900)])  # fmt: skip
def test_viewer_shows_small_pictures_enlarged_on_the_screen_not_in_the_file(size, css):
    """A picture under 512 px keeps its own pixels in the viewer and is shown with its long side at
    512 px (the browser enlarges it); larger ones at their size, at most 900 px wide."""
    maps, block_maps = moving_spot_maps()
    photo = np.zeros((*size, 3), np.uint8)
    page = viewer_html(photo, maps, block_maps, title="t", target="x")
    assert f'width="{size[1]}" height="{size[0]}" style="width: {css}px"' in page
    embedded = re.search(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(embedded))).size == (size[1], size[0])


def _canvas(driver) -> np.ndarray:
    uri = driver.execute_script("return document.getElementById('view').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def _set(driver, element: str, value) -> None:
    driver.execute_script(f"const s = document.getElementById('{element}'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('change'));", value)  # fmt: skip


def test_viewer_draws_the_librarys_pictures_in_headless_chromium(tmp_path):
    """The viewer holds the photo once and the raw maps; what Chromium draws on its canvas equals
    the library's overlay of the same photo (within 2 grey levels), for every display
    normalisation, per-block maps, another colormap, another map weight and both blends; the
    controls work."""
    from browser import chrome
    from selenium.webdriver.support.ui import WebDriverWait

    from vitflow.render.placement import Box, Display

    torch.manual_seed(3)
    maps = torch.rand(L, 5, 7).cumsum(0) ** 2  # a non-square grid
    block_maps = torch.rand(L, 5, 7)
    photo = np.asarray(Image.fromarray(IMAGE).resize((150, 111), Image.Resampling.BICUBIC))
    display = Display(photo, Box(top=-6.3, left=20.4, height=96.0, width=112.5))  # dimmed around, cut off
    top5 = [{"name": "disc", "probability": 0.9}, {"name": "square", "probability": 0.1}]
    page = tmp_path / "viewer.html"
    page.write_text(viewer_html(display, maps, block_maps, title="test", target="disc", top5=top5))
    embedded = re.search(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page.read_text()).group(1)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(embedded))).convert("RGB"))
    assert len(re.findall(r"data:image/", page.read_text())) == 1  # one copy of the photo, no pictures
    library = Display(decoded, display.box)  # the photo as the browser has it
    driver = chrome(tmp_path / "profile")
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.body.dataset.ready") == "1"
        )
        frame = lambda: driver.execute_script("return document.getElementById('view').dataset.frame")  # noqa: E731
        assert frame() == "accumulated-5-jet-0.4-sigmoid-fade"
        checked = 0
        for mode in ("sigmoid", "global", "minmax"):
            _set(driver, "mode", mode)
            for block in (1, 3, L):
                _set(driver, "block", block)
                expected = library.overlay(library.heat(maps, mode=mode)[block - 1])
                drawn = _canvas(driver)
                assert drawn.shape == expected.shape
                assert np.abs(drawn.astype(int) - expected).max() <= 2, (mode, block)
                checked += 1
        driver.find_element("id", "perblock").click()
        _set(driver, "cmap", "viridis")
        _set(driver, "opacity", 0.7)
        _set(driver, "block", 2)
        assert frame() == "block-2-viridis-0.7-minmax-fade"
        expected = library.overlay(library.block_heat(block_maps)[1], alpha=0.7, cmap="viridis")
        assert np.abs(_canvas(driver).astype(int) - expected).max() <= 2
        _set(driver, "blend", "paper")  # the published overlay, not faded
        assert frame() == "block-2-viridis-0.7-minmax-paper"
        paper = library.overlay(library.block_heat(block_maps)[1], alpha=0.7, cmap="viridis", blend="paper")
        assert np.abs(_canvas(driver).astype(int) - paper).max() <= 2 and (paper != expected).any()
        assert checked == 9
        driver.find_element("id", "play").click()
        WebDriverWait(driver, 10).until(lambda d: not frame().startswith("block-2-"))
        driver.find_element("id", "play").click()
        assert driver.find_element("id", "top5").text.startswith("disc 0.900")
        shot = Path(os.environ.get("VITFLOW_SCREENSHOT_DIR", tmp_path)) / "viewer.png"
        driver.save_screenshot(str(shot))
        assert Image.open(shot).width > 300
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()


def test_index_of_many_images_is_paged_and_filtered_in_headless_chromium(tmp_path):
    from browser import chrome
    from selenium.webdriver.support.ui import WebDriverWait

    from vitflow.render import index_html

    entries = [{"name": f"photos/img_{i:05d}", "viewer": f"photos/img_{i:05d}/viewer.html",
                "thumbnail": f"photos/img_{i:05d}/final.jpg", "target": "tabby" if i % 7 == 0 else "disc"}
               for i in range(50_000)]  # fmt: skip
    page = tmp_path / "index.html"
    page.write_text(index_html(entries, "vitflow: big run", page_size=100))
    driver = chrome(tmp_path / "profile")
    try:
        driver.get(page.as_uri())
        ready = lambda d: d.execute_script("return document.body.dataset.ready") == "1"  # noqa: E731
        WebDriverWait(driver, 30).until(ready)
        links = lambda: driver.execute_script(  # noqa: E731
            "return Array.from(document.querySelectorAll('#items a')).map(a => a.getAttribute('href'))"
        )
        assert links()[:2] == ["photos/img_00000/viewer.html", "photos/img_00001/viewer.html"]
        assert len(links()) == 100
        assert driver.find_element("id", "page").text == "page 1 of 500 (50000 of 50000 images)"
        assert driver.execute_script("return document.querySelector('#items img').loading") == "lazy"
        driver.find_element("id", "next").click()
        assert links()[0] == "photos/img_00100/viewer.html"
        filter_box = driver.find_element("id", "filter")
        filter_box.send_keys("tabby")
        assert driver.find_element("id", "page").text == "page 1 of 72 (7143 of 50000 images)"
        assert links()[1] == "photos/img_00007/viewer.html"
    finally:
        driver.quit()


def test_results_display_themselves_in_notebooks_and_show_plots_them():
    result = fake_result()
    page = result._repr_html_()
    assert "DAAMResult: 2 image(s), 5 blocks, grid 6x6" in page
    gif = Image.open(io.BytesIO(base64.b64decode(re.search(r"base64,([^']+)'", page).group(1))))
    assert gif.n_frames == L
    fig = show(result, image=IMAGE, blocks=[2, 5], per_block=True)
    assert len([ax for ax in fig.axes if ax.images]) == 1 + 2 + 2
    assert len([ax for ax in show(result).axes if ax.images]) == 1 + L


def test_mp4_writer_pads_odd_sizes_and_refuses_empty(tmp_path):
    frames = [np.full((33, 47, 3), v, np.uint8) for v in (0, 128, 255)]
    path = write_mp4(frames, tmp_path / "odd.mp4", fps=4, hold_last=1)
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    assert reader.__next__()["size"] == (48, 34)
    assert len(list(reader)) == 3
    with pytest.raises(ValueError, match="at least one frame"):
        write_mp4([], tmp_path / "none.mp4")
