"""The README's screenshot of `vitflow app`: the demo ViT on a held-out scene (test stream seed 3,
scene 2) after an upload (its preview, the example thumbnails, the final map), in headless
Chromium.

    python scripts/app_screenshot.py      # writes docs/app.png (needs chromium and chromedriver)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import chrome  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from vitflow.data.scenes import generate_scene  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp())
    scene = work / "scene.png"
    Image.fromarray(generate_scene(3, 2).image).save(scene)
    port = 7890
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "vitflow", "app", "--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = chrome(work / "profile")
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except OSError:
                time.sleep(1)
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
        upload.send_keys(str(scene))
        wait.until(lambda d: "scene" in d.find_element(By.ID, "upload").text)
        driver.find_element(By.ID, "explain").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#daam img"))
        time.sleep(2)
        driver.set_window_size(1400, 1250)
        driver.save_screenshot(str(ROOT / "docs" / "app.png"))
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {ROOT / 'docs' / 'app.png'}")


if __name__ == "__main__":
    main()
