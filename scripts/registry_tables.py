"""Print the README's method and metric tables from the registries (tests/test_readme.py checks
that the README holds exactly these)."""

import vitflow.methods  # noqa: F401  (registers the methods)
import vitflow.metrics  # noqa: F401  (registers the metrics)
from vitflow.registry import METHODS, METRICS, markdown

if __name__ == "__main__":
    print(markdown(METHODS))
    print(markdown(METRICS), end="")
