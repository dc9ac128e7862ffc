"""``vitflow app``: the session logic (pictures equal the library's, bad uploads get a message) and
the real app in headless Chromium: upload, wait for the maps, move the block slider, a bad
upload, a clean stop."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app extra: pip install 'vitflow[app]'")

from vitflow import DAAM  # noqa: E402
from vitflow.app import AppError, Session  # noqa: E402
from vitflow.data.scenes import CLASS_NAMES, generate_scene  # noqa: E402
from vitflow.models import LoadedModel  # noqa: E402
from vitflow.models.demo import NAME, load_demo_model  # noqa: E402
from vitflow.render.placement import CropBoxes, Display  # noqa: E402


def _expected(path, block, opacity=0.4, kind="accumulated"):
    """The library's picture of ``block`` for the image file at ``path``: DAAM on the demo ViT,
    drawn on the original where the crop came from."""
    model, pre = load_demo_model()
    image = Image.open(path).convert("RGB")
    with DAAM(model) as daam:
        result = daam(pre(image)[None])
    display = Display.of_original(image, CropBoxes(pre).box(image.height, image.width))
    heat = display.heat(result.maps[0]) if kind == "accumulated" else display.block_heat(result.block_maps[0])
    return display.overlay(heat[block - 1], alpha=opacity, image_weight=0.8)  # the command line's weights


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    scene = generate_scene(3, 2).image
    Image.fromarray(np.concatenate([scene, scene[:, :80]], axis=1)).save(root / "scene.png")
    (root / "notes.jpg").write_text("not an image at all")
    return root


def test_session_pictures_are_the_librarys(files):
    model, pre = load_demo_model()
    session = Session(LoadedModel(model, pre, list(CLASS_NAMES), NAME))
    explained = session.explain(files / "scene.png")
    for block in (1, 4, 6):
        np.testing.assert_array_equal(
            session.picture(explained, block), _expected(files / "scene.png", block)
        )
    assert not np.array_equal(session.picture(explained, 1), session.picture(explained, 6))
    per_block = session.picture(explained, 3, kind="per block", opacity=0.7)
    np.testing.assert_array_equal(per_block, _expected(files / "scene.png", 3, 0.7, "per block"))
    # a chosen class, a baseline beside, statistics, the bundle
    chosen = session.explain(files / "scene.png", CLASS_NAMES[4])
    assert int(chosen.result.target[0]) == 4 and chosen.label == CLASS_NAMES[4]
    beside = session.baseline(chosen, "rollout")
    assert beside.shape == session.picture(chosen, 6).shape
    # the baselines offered are the ones this model can run, the newest included
    assert {"rollout", "legrad", "attnlrp", "generic_attention"} <= set(session.baselines)
    assert session.baseline(chosen, "legrad").shape == beside.shape
    rows = session.stats(chosen)
    assert len(rows) == 6 and abs(sum(r[3] for r in rows) - 1) < 1e-2
    archive = session.bundle(chosen, files / "bundle")
    import zipfile

    names = zipfile.ZipFile(archive).namelist()
    assert {"scene/flow.gif", "scene/manifest.json", "scene/viewer.html", "scene/maps.safetensors"} <= set(
        names
    )
    with pytest.raises(AppError, match="not an image file"):
        session.explain(files / "notes.jpg")
    # the preview is the image as vitflow reads it, reduced (never enlarged) to 256 px
    preview = session.preview(files / "scene.png")
    reference = Image.open(files / "scene.png").convert("RGB")
    reference.thumbnail((256, 256), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(preview, np.asarray(reference))
    assert session.preview(files / "scene.png", size=512).shape == (224, 304, 3)
    with pytest.raises(AppError, match=r"^notes\.jpg: .*not an image file"):
        session.preview(str(files / "notes.jpg"))


def test_concurrent_requests_do_not_run_the_model_at_once(files):
    """The session's lock: two threads explaining at once never overlap inside the model."""
    import threading

    model, pre = load_demo_model()
    inside, overlaps = [0], [0]
    original = model.forward

    def watched(x):
        inside[0] += 1
        overlaps[0] = max(overlaps[0], inside[0])
        time.sleep(0.05)
        try:
            return original(x)
        finally:
            inside[0] -= 1

    model.forward = watched
    session = Session(LoadedModel(model, pre, list(CLASS_NAMES), NAME))
    threads = [threading.Thread(target=session.explain, args=(files / "scene.png",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def test_app_in_headless_chromium(files, tmp_path):
    from browser import chrome
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome(tmp_path / "profile")
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "vitflow", "app", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(
                        f"the app did not start: {server.communicate()[1][-2000:]}"
                    ) from None
                time.sleep(1)
        driver.get(url)
        wait = WebDriverWait(driver, 90)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
        # before any upload: the block slider spans the demo ViT's 6 blocks, the map weight is the CLI's
        # (the page renders in parts: wait for each element, not only the first one)
        slider = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#block input[type=range]"))
        assert (slider.get_attribute("min"), slider.get_attribute("max")) == ("1", "6")
        weight = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#opacity input[type=range]"))
        assert weight.get_attribute("value") == "0.4"
        # the examples are thumbnails (the three held-out scenes), not text chips
        thumbs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples img") or None)
        assert len(thumbs) == 3 and all(t.get_attribute("src") for t in thumbs)

        def preview_src():
            found = driver.find_elements(By.CSS_SELECTOR, "#preview img")
            return found[0].get_attribute("src") if found else None

        def daam_src():
            found = driver.find_elements(By.CSS_SELECTOR, "#daam img")
            return found[0].get_attribute("src") if found else None

        def explain(path):
            upload.send_keys(str(path))
            wait.until(lambda d: path.stem in d.find_element(By.ID, "upload").text)  # the name is split
            driver.find_element(By.ID, "explain").click()

        explain(files / "scene.png")
        # the upload is previewed as vitflow reads it, reduced to a long side of 256
        wait.until(lambda d: preview_src())
        shown = _fetch(preview_src())
        assert shown.shape[1:] == (256, 3) and abs(shown.shape[0] - 224 * 256 / 304) <= 1  # 304 x 224
        wait.until(lambda d: daam_src())
        first = daam_src()
        np.testing.assert_array_equal(_fetch(first), _expected(files / "scene.png", 6))
        wait.until(lambda d: "Explained" in d.find_element(By.ID, "status").text)
        # move the block slider to 2: the picture changes to the library's block-2 picture
        slider = driver.find_element(By.CSS_SELECTOR, "#block input[type=range]")
        driver.execute_script(
            "const s = arguments[0]; s.value = 2; s.dispatchEvent(new Event('input', {bubbles: true}));"
            "s.dispatchEvent(new Event('change', {bubbles: true}));"
            "s.dispatchEvent(new Event('pointerup', {bubbles: true}));",
            slider,
        )
        wait.until(lambda d: daam_src() and daam_src() != first)
        np.testing.assert_array_equal(_fetch(daam_src()), _expected(files / "scene.png", 2))
        label = lambda d: d.find_element(By.CSS_SELECTOR, "#daam").text  # noqa: E731
        wait.until(lambda d: "DAAM: accumulated map, block 2 of 6: " in label(d))
        # the page after the upload, as a user sees it: a picture, not a blank or error screen
        shot = tmp_path / "app.png"
        driver.save_screenshot(str(shot))
        with Image.open(shot) as picture:
            assert picture.width >= 1000 and np.asarray(picture.convert("L")).std() > 20
        # a file that is not an image: a message in the page, not a stack trace
        for clear in driver.find_elements(By.CSS_SELECTOR, "#upload button[aria-label='Clear']"):
            clear.click()
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
        explain(files / "notes.jpg")
        wait.until(lambda d: "Could not explain" in d.find_element(By.ID, "status").text)
        status = driver.find_element(By.ID, "status").text
        assert "notes.jpg" in status and "not an image file" in status
        assert "/tmp" not in status and "gradio" not in status.lower()  # not the upload's temporary path
        assert "Traceback" not in driver.page_source
        # a click on an example thumbnail puts that scene in the uploader and its preview
        before = preview_src()
        driver.find_elements(By.CSS_SELECTOR, "#examples img")[1].click()
        wait.until(lambda d: "scene_1" in d.find_element(By.ID, "upload").text)
        wait.until(lambda d: preview_src() and preview_src() != before)
        assert _fetch(preview_src()).shape == (224, 224, 3)  # a 224 x 224 scene, not enlarged
    finally:
        driver.quit()
        server.send_signal(signal.SIGINT)  # Ctrl+C
        try:
            out, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert f"http://127.0.0.1:{port}" in out
