"""The README's method and metric tables are the registries' (scripts/registry_tables.py)."""

from pathlib import Path

import vitflow.methods  # noqa: F401
import vitflow.metrics  # noqa: F401
from vitflow.registry import METHODS, METRICS, markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tables_list_exactly_the_registered_methods_and_metrics():
    text = README.read_text()
    for registry in (METHODS, METRICS):
        table = markdown(registry)
        assert table in text, f"README's {registry.kind} table is stale: python scripts/registry_tables.py"
    assert len(METHODS.names()) >= 9 and len(METRICS.names()) >= 11
