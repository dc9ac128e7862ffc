"""The package's layout is its layer diagram: each folder imports only from the layers below it (and
itself), no module imports another in a circle (lazy imports inside functions count), the top level
stays small, no file grows past 600 lines; and a new model family joins every command from one file."""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitflow.adapters as adapters
from vitflow import DAAM
from vitflow.cli import COMMANDS, main
from vitflow.data.scenes import write_scenes
from vitflow.models import FAMILIES, load_model

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vitflow"

#: bottom to top; a module may import its own layer and the layers below, never one above
LAYERS = [
    ["vitflow.version", "vitflow.registry", "vitflow.atomic"],
    ["vitflow.core"],
    ["vitflow.data"],
    ["vitflow.render"],
    ["vitflow.adapters"],
    ["vitflow.targets"],
    ["vitflow.models"],
    ["vitflow.explainer"],
    ["vitflow.metrics"],
    ["vitflow.methods"],
    ["vitflow.outputs"],
    ["vitflow.runs"],
    ["vitflow.integrations", "vitflow.app", "vitflow.cli", "vitflow", "vitflow.__main__"],
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in the file (lazy imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def _layer(module: str) -> int:
    """The layer of ``module``: the one holding the longest of its package prefixes (``vitflow``
    itself only exactly: it is the public API, a front end)."""
    matches = [
        (len(prefix), i)
        for i, members in enumerate(LAYERS)
        for prefix in members
        if module == prefix or (prefix != "vitflow" and module.startswith(prefix + "."))
    ]
    assert matches, f"{module} is in no layer of tests/test_layout.py: add its folder to LAYERS"
    return max(matches)[1]


def test_every_import_goes_down_the_layers():
    known = _modules()
    upward = [
        f"{name} ({'/'.join(LAYERS[_layer(name)])}) imports {target} ({'/'.join(LAYERS[_layer(target)])})"
        for name, path in known.items()
        for target in sorted(_imports(name, path, known))
        if _layer(target) > _layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles_lazy_imports_included():
    known = _modules()
    graph = {name: _imports(name, path, known) for name, path in known.items()}
    # a package's __init__ importing its own submodules is how packages are built; a submodule
    # importing its package back is the circle that matters
    graph = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_small_top_level_and_short_files():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    lines = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in lines.items() if n > 600}
    assert not long, long


def test_every_command_module_has_its_docs_page():
    sys.path.insert(0, str(PACKAGE.parents[1] / "scripts"))
    try:
        make_docs = importlib.import_module("make_docs")
    finally:
        sys.path.pop(0)
    for module in COMMANDS:  # each command module alone, on a parser of its own
        parser = argparse.ArgumentParser()
        module.add_parser(parser.add_subparsers())
        pages = ["-".join(words) for words, _, _ in make_docs.commands(parser)]
        assert pages and set(pages) <= set(make_docs.COMMANDS), (module.__name__, pages)
    written = {path.stem for path in (PACKAGE.parents[1] / "docs" / "commands").glob("*.md")}
    assert written == set(make_docs.COMMANDS) and len(COMMANDS) == 7


@pytest.fixture
def toy(monkeypatch):
    """The toy family registered from its one file into copies of the registries."""
    monkeypatch.setattr(adapters, "ADAPTERS", list(adapters.ADAPTERS))
    saved = dict(FAMILIES)  # one dict that every reader shares: restored in place
    sys.modules.pop("toy_family", None)
    module = importlib.import_module("toy_family")
    yield module
    FAMILIES.clear()
    FAMILIES.update(saved)
    sys.modules.pop("toy_family", None)


def test_a_model_family_from_one_file_joins_models_explain_and_evaluate(toy, tmp_path, capsys):
    assert main(["models", "--markdown"]) == 0
    row = "| toy | `ToyViT` | the tests' toy ViT (fused attention) | `toy:tiny` | yes |"
    assert row in capsys.readouterr().out
    assert main(["models"]) == 0  # the terminal's table: within 100 columns, cells wrapped
    table = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in table) <= 100 and any("ToyViT" in line for line in table)
    assert main(["models", "t*"]) == 0
    listed = capsys.readouterr().out
    assert "toy          tiny" in listed and "ToyViT" in listed

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(40, 56), (64, 64), (33, 90)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    code = main(["explain", str(folder), "--model", "toy:tiny", "--out", str(tmp_path / "o"),
                 "--batch-size", "2", "--workers", "0", "--writers", "0", "--quiet"])  # fmt: skip
    assert code == 0
    loaded = load_model("toyvit:tiny")  # the alias names the same family
    for i in range(3):
        manifest = json.loads(next((tmp_path / "o").rglob(f"p{i}/manifest.json")).read_text())
        x = loaded.preprocessing(Image.open(folder / f"p{i}.png"))[None]
        with DAAM(loaded.model) as daam:
            alone = daam(x)
        assert manifest["model"] == "toy:tiny" and manifest["grid"] == [4, 4] and manifest["num_blocks"] == 2
        assert manifest["target"]["index"] == int(alone.target[0])
        assert manifest["target"]["name"] == f"toy_class_{int(alone.target[0])}"
        assert manifest["blocks"][-1]["map"]["sum"] == pytest.approx(float(alone.final[0].sum()), rel=1e-5)

    write_scenes(tmp_path / "s", 4, seed=0)
    code = main(["evaluate", "--model", "toy:tiny", "--data", str(tmp_path / "s"),
                 "--out", str(tmp_path / "e"), "--methods", "daam,rollout,attention_gradcam",
                 "--metrics", "pointing_game,energy", "--per-block-metrics", "energy", "--batch-size", "3",
                 "--workers", "0", "--quiet"])  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["items"] == 4 and set(results["methods"]) == {"daam", "rollout", "attention_gradcam"}
    assert 0 <= results["methods"]["daam"]["energy"] <= 1
    assert len(results["per_block"]["daam"]["energy"]) == 2


def test_the_toy_family_leaves_no_trace(tmp_path, capsys):
    assert "toy" not in FAMILIES and all(cls.family != "toy" for cls in adapters.ADAPTERS)
    assert main(["explain", str(tmp_path), "--model", "toy:tiny", "--out", str(tmp_path / "o")]) == 2
    assert "unknown model family 'toy'" in capsys.readouterr().err
    assert torch.is_grad_enabled()
