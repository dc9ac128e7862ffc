"""The whole package passes mypy (configuration in pyproject.toml), and says so (``py.typed``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_type_checks():
    pytest.importorskip("mypy", reason="the type checker is a test dependency")
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_package_is_marked_typed():
    import vitflow

    assert (Path(vitflow.__file__).parent / "py.typed").is_file()
