"""The worked examples of the command pages: every command run as written, offline (the bundled
demo ViT and procedural scenes), with what it prints and the pictures it writes.

    python scripts/make_examples.py [PAGE ...]   # writes docs/snippets/examples/*.md and docs/examples/

A page's examples run in order in one fresh folder (a later example uses what an earlier one
wrote, as a reader following the page would); the page shows the lines, their output and the
pictures named. ``tests/test_docs.py`` runs every example the same way and checks that
it succeeds and writes those pictures (the text shown is from the last run of this script).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Example:
    title: str
    lines: tuple[str, ...]
    #: (file the lines write, a glob: its first match; caption): copied to docs/examples/<page>/
    pictures: tuple[tuple[str, str], ...] = ()
    #: show what the lines print (the last ``tail`` lines)
    tail: int = 12
    #: why the lines are shown but not run (a server that runs until stopped)
    not_run: str = ""
    after: str = ""


SCENES = "vitflow scenes --out scenes --n 8 --seed 3"
ONE = "scenes/images/*/scene_000000.png"  # the shell expands it

EXAMPLES: dict[str, list[Example]] = {
    "explain": [
        Example(
            "Explain a folder of images (the bundled demo ViT; `--model` for yours)",
            (SCENES, "vitflow explain scenes/images --out runs/scenes --gif"),
            (
                ("runs/scenes/*/scene_000000/final.jpg", "final.jpg: the explanation on the image"),
                ("runs/scenes/*/scene_000000/flow.gif", "flow.gif (with `--gif`): block by block"),
            ),
            after="Open `runs/scenes/index.html` for every image's viewer.",
        ),
        Example(
            "Every block's picture and a publication figure for one image",
            (f"vitflow explain {ONE} --out runs/one --blocks --figure --figure-blocks 1,3,6",),
            (("runs/one/scene_000000/figure.png", "figure.png (`--figure`): accumulated, per block"),),
        ),
        Example(
            "Maps only, read back in Python",
            (
                "vitflow explain scenes/images --out runs/maps --no-images --quiet",
                "python -c \"import vitflow; s = vitflow.load_maps('runs/maps'); "
                "print(s.ids[:2], tuple(s.result.maps.shape))\"",
            ),
        ),
    ],
    "demo": [
        Example(
            "Explain held-out scenes with the demo ViT, then through its memory bank",
            ("vitflow demo --n 4 --out runs/demo", "vitflow demo --n 4 --knn --out runs/knn"),
            (("runs/demo/scene_000000/final.jpg", "runs/demo/scene_000000/final.jpg"),),
        ),
    ],
    "scenes": [
        Example(
            "Scenes with two objects each, and their exact masks",
            ("vitflow scenes --out pairs --n 4 --seed 3 --objects 2", "ls pairs pairs/masks | head -8"),
            (
                ("pairs/images/*/scene_000000.png", "an image (filed under its first object's class)"),
                ("pairs/masks/scene_000000_0.png", "the first object's mask"),
            ),
        ),
    ],
    "evaluate": [
        Example(
            "Three methods, two metrics, DAAM after every block",
            (
                "vitflow scenes --out scenes --n 16 --seed 3",
                "vitflow evaluate --data scenes --out runs/eval --methods daam,rollout,generic_attention "
                "--metrics pointing_game,energy",
            ),
            (("runs/eval/per_block.png", "per_block.png: DAAM's map scored after each block"),),
        ),
    ],
    "bank-build": [
        Example(
            "A memory bank from an ImageFolder tree, then explain through it",
            (
                "vitflow scenes --out train --n 24 --seed 1",
                "vitflow bank build --data train/images --out demo.bank --quiet",
                "vitflow scenes --out test --n 2 --seed 3",
                "vitflow explain test/images --bank demo.bank --k 5 --out runs/knn",
            ),
            (("runs/knn/*/scene_000000/final.jpg", "the k-NN decision explained"),),
        ),
    ],
    "bank-import": [
        Example(
            "Features and labels from another tool",
            (
                "python -c \"import numpy as np; r = np.random.default_rng(0); "
                "np.save('f.npy', r.normal(size=(30, 192)).astype('float32')); "
                "np.save('y.npy', np.arange(30) % 3)\"",
                "printf 'cat\\ndog\\nbird\\n' > names.txt",
                "vitflow bank import --features f.npy --labels y.npy --classes names.txt --out mine.bank",
                "vitflow bank info mine.bank",
            ),
        ),
    ],
    "bank-info": [
        Example(
            "What a bank holds",
            (
                "vitflow scenes --out train --n 16 --seed 1 > /dev/null",
                "vitflow bank build --data train/images --out demo.bank --half --quiet",
                "vitflow bank info demo.bank",
            ),
        ),
    ],
    "models": [
        Example(
            "Which models DAAM explains, without downloading anything",
            ("vitflow models 'deit3_small*'", "vitflow models 'torchvision:*'"),
        ),
    ],
    "app": [
        Example(
            "Serve the app on this machine",
            ("vitflow app",),
            not_run="it serves until stopped; tests/test_app.py drives it in headless Chromium",
            after="Then open http://127.0.0.1:7860: upload an image, choose the class, move through the "
            "blocks.\n\n![vitflow app](../app.png)",
        ),
    ],
}


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COLUMNS": "100",
        "HF_HUB_OFFLINE": "1",
    }


def run(example: Example, folder: Path) -> list[str]:
    """Run ``example``'s lines in ``folder``; what each prints (stdout and stderr in order)."""
    printed = []
    for line in example.lines:
        done = subprocess.run(
            ["bash", "-c", line], cwd=folder, env=environment(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{line!r} failed ({done.returncode}): {done.stdout[-2000:]}")
        printed.append(done.stdout)
    for name, _ in example.pictures:
        written(folder, name)
    return printed


def written(folder: Path, pattern: str) -> Path:
    """The first file (sorted) in ``folder`` matching ``pattern``."""
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not found:
        raise RuntimeError(f"{pattern} was not written")
    return found[0]


def snippet(page: str, examples: list[Example], printed: list[list[str]]) -> str:
    parts = ["<!-- generated by scripts/make_examples.py: the lines run as written -->\n"]
    for i, (example, outs) in enumerate(zip(examples, printed, strict=True)):
        parts.append(f"### {example.title}\n\n```bash\n" + "\n".join(example.lines) + "\n```\n")
        shown = []
        for line, out in zip(example.lines, outs, strict=False):  # an example not run has no output
            lines = out.rstrip("\n").splitlines()
            if not lines or not example.tail:
                continue
            tail = lines[-example.tail :]
            more = [f"... ({len(lines) - len(tail)} lines above)"] if len(lines) > len(tail) else []
            shown += [f"$ {line}", *more, *tail]
        if shown:
            parts.append("```text\n" + "\n".join(shown) + "\n```\n")
        for j, (name, caption) in enumerate(example.pictures):
            target = f"../examples/{page}/{i}_{j}_{Path(name).name}"
            parts.append(f"![{caption}]({target})\n\n*{caption}*\n")
        if example.after:
            parts.append(example.after + "\n")
    return "\n".join(parts)


def main(pages: list[str]) -> None:
    for page, examples in EXAMPLES.items():
        if pages and page not in pages:
            continue
        printed = []
        pictures = DOCS / "examples" / page
        shutil.rmtree(pictures, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            for i, example in enumerate(examples):
                if example.not_run:
                    printed.append([])
                    continue
                printed.append(run(example, Path(tmp)))
                for j, (name, _) in enumerate(example.pictures):
                    pictures.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(written(Path(tmp), name), pictures / f"{i}_{j}_{Path(name).name}")
        path = DOCS / "snippets" / "examples" / f"{page}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(snippet(page, examples, printed))
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
