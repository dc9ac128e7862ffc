"""The documentation site: the generated pages (one per command, the model, method and metric
tables) are current, ``mkdocs build --strict`` succeeds (a broken reference or docstring fails
it), the built HTML shows no raw reST, every link works from ``file://``, and the API page reads
right in headless Chromium."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: what reST leaves in a page when a docstring is not rendered: roles, and the literal-block marker
RAW_REST = re.compile(r":(?:meth|class|func|mod|data|attr|exc|obj|ref):|::\s*$|``", re.M)


def _script(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def test_generated_pages_are_current():
    make_docs = _script("make_docs")
    for path, text in make_docs.pages().items():
        assert path.read_text() == text, f"{path.name} is stale: python scripts/make_docs.py"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in make_docs.COMMANDS:
        assert f"commands/{page}.md" in nav


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs tools are test dependencies")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def _text(page: Path) -> str:
    """The words a reader sees: tags, scripts and styles dropped, entities decoded."""
    source = re.sub(r"<(script|style)\b.*?</\1>", " ", page.read_text(), flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "\n", source))


def test_site_builds_in_strict_mode(site):
    api = (site / "api.html").read_text()
    assert "DAAMAttribution" in api and "attention flow" in api  # docstrings rendered
    assert "BEiT" in (site / "models.html").read_text()  # the table included
    assert "| `daam` |" not in (site / "evaluation.html").read_text()  # the registry table as a table
    assert "<td><code>daam</code></td>" in (site / "evaluation.html").read_text()


def test_no_raw_rest_anywhere_in_the_built_site(site):
    pages = [p for p in site.rglob("*.html") if p.name != "404.html"]
    assert len(pages) >= 20
    for page in pages:
        text = _text(page)
        found = [text[max(0, m.start() - 40) : m.end() + 20] for m in RAW_REST.finditer(text)]
        assert not found, f"{page.relative_to(site)} shows raw reST: {found[:3]}"


def test_every_link_works_from_file_urls(site):
    """Opened from disk, a link must name a file: a folder link lands on a directory listing."""
    checked = 0
    for page in site.rglob("*.html"):
        if page.name == "404.html":
            continue  # a server's error page: its links are absolute on purpose
        for href in re.findall(r'href="([^"]+)"', page.read_text()):
            parts = urlsplit(html.unescape(href))
            if parts.scheme or parts.netloc or not parts.path:
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_file(), f"{page.relative_to(site)} links to {href}, which is not a file"
            checked += 1
    assert checked > 300


def test_api_page_in_headless_chromium(site, tmp_path):
    """The API page as a reader sees it from file://: rendered signatures and code, no raw roles,
    a screenshot that is not blank, and the navigation reaching the other pages."""
    from browser import chrome
    from PIL import Image
    from selenium.webdriver.common.by import By

    driver = chrome(tmp_path / "profile")
    try:
        driver.get((site / "api.html").as_uri())
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "DAAM" in text and "load_maps" in text and "SavedMaps" in text
        assert not RAW_REST.search(text), RAW_REST.search(text)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".doc-signature, .doc-heading")) >= 10
        shot = tmp_path / "api.png"
        driver.save_screenshot(str(shot))
        with Image.open(shot) as picture:
            low, high = picture.convert("L").getextrema()
        assert high - low > 100  # text on a page, not an empty or error screen
        link = driver.find_element(By.CSS_SELECTOR, "a[href$='outputs.html']")
        driver.get(link.get_attribute("href"))
        assert "What a run writes" in driver.title and "final.jpg" in driver.page_source
    finally:
        driver.quit()


def test_one_docstring_style_in_the_source():
    """Google-style docstrings in Markdown (what mkdocstrings renders): no reST roles or ``::``
    literal-block markers anywhere in the package, rendered or not yet."""
    role = re.compile(r":(?:meth|class|func|mod|data|attr|exc|obj|ref):`|\S::\n")
    found = [
        f"{path.relative_to(ROOT)}:{source[: m.start()].count(chr(10)) + 1}"
        for path in sorted((ROOT / "src" / "vitflow").rglob("*.py"))
        for source in [path.read_text()]
        for m in role.finditer(source)
    ]
    assert not found, f"reST in docstrings: {found[:5]}"


def test_every_command_page_has_worked_examples_with_their_output():
    make_docs, make_examples = _script("make_docs"), _script("make_examples")
    assert sorted(make_examples.EXAMPLES) == sorted(make_docs.COMMANDS)
    for page, examples in make_examples.EXAMPLES.items():
        text = (ROOT / "docs" / "snippets" / "examples" / f"{page}.md").read_text()
        assert "```bash" in text and ("```text" in text or "![" in text), page
        for i, example in enumerate(examples):
            stale = f"{page}: examples are stale: python scripts/make_examples.py {page}"
            assert "\n".join(example.lines) in text, stale
            for j, (name, _) in enumerate(example.pictures):
                assert (ROOT / "docs" / "examples" / page / f"{i}_{j}_{Path(name).name}").is_file()


@pytest.mark.parametrize("page", ["explain", "demo", "scenes", "evaluate", "bank-build", "bank-import",
                                  "bank-info", "models"])  # fmt: skip
def test_command_examples_run_as_written(page, tmp_path):
    """Each example's lines, run in a fresh folder as a reader would, succeed and write the
    pictures its page shows (``app`` is shown, not run: it serves until stopped; test_app.py
    drives it)."""
    make_examples = _script("make_examples")
    for example in make_examples.EXAMPLES[page]:  # in order, in one folder, as the page reads
        assert not example.not_run
        printed = make_examples.run(example, tmp_path)
        assert len(printed) == len(example.lines)
