"""Debian's headless Chromium through Selenium, for the tests that drive a real browser."""

from __future__ import annotations

import os
import shutil

import pytest


def chrome(profile):
    """A headless Chromium driver (the caller quits it); skips without chromium/chromedriver
    unless ``VITFLOW_REQUIRE_BROWSER`` is set (CI), where it fails."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("VITFLOW_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required here (VITFLOW_REQUIRE_BROWSER is set)")
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--window-size=1400,1200", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)
