"""The documentation site: the generated pages (one per command, the model table) are current,
and ``mkdocs build --strict`` succeeds (a broken reference or docstring fails it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_pages_are_current():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_docs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    for path, text in make_docs.pages().items():
        assert path.read_text() == text, f"{path.name} is stale: python scripts/make_docs.py"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in make_docs.COMMANDS:
        assert f"commands/{page}.md" in nav


def test_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools are test dependencies")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "DAAMAttribution" in api and "attention flow" in api  # docstrings rendered
    assert "BEiT" in (tmp_path / "site" / "models" / "index.html").read_text()  # the table included
