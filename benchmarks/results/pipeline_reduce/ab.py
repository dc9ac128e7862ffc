"""A record of the measurement in CHANGELOG and issue 22 (run from the repository root).

An A/B in one process: ``explain_files`` with its default outputs, the display copy made by the
old rule (torch's antialiased resize to 224-768 px) against the new one (a whole-factor reduce),
the two interleaved and each beside its own model-only pass.

    python benchmarks/results/pipeline_reduce/ab.py deit_small_patch16_224 4 PHOTOS
    # PHOTOS: a folder made by benchmarks/pipeline.py's photos(folder, 32)
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, "benchmarks")
from pipeline import load, model_only  # noqa: E402

import vitflow.render.placement as placement  # noqa: E402
from vitflow.runs.explain import explain_files  # noqa: E402

new_of = placement.Shown.of.__func__


def old_of(cls, original, size=None):
    pixels = np.asarray(original if original.mode == "RGB" else original.convert("RGB"))
    height, width = pixels.shape[:2]
    longest = max(height, width)
    factor = (size if size is not None else min(max(longest, 224), 768)) / longest
    shape = max(1, round(height * factor)), max(1, round(width * factor))
    return cls(placement.resized(pixels, shape), placement.original_size(original))


model, pre = load(sys.argv[1], "cpu")
folder = Path(sys.argv[3])
files = sorted(folder.glob("*.jpg"))
timings = []


def run(of) -> float:
    placement.Shown.of = classmethod(of)
    out = Path(tempfile.mkdtemp()) / "out"
    start = time.perf_counter()
    timings.append(explain_files(model, pre, [folder], out, batch_size=8).timings)
    return time.perf_counter() - start


run(old_of)
run(new_of)
rows: dict[str, list] = {"old": [], "new": []}
for r in range(int(sys.argv[2])):
    order = (("old", old_of), ("new", new_of)) if r % 2 == 0 else (("new", new_of), ("old", old_of))
    for name, of in order:
        alone = model_only(model, pre, files, 8, "cpu")
        whole = run(of)
        rows[name].append((alone, whole))
        t = timings[-1]
        print(f"{r} {name} model {alone:.2f} s  explain {whole:.2f} s  ratio {alone / whole:.3f}  "
              f"read {t['read']:.2f} model {t['model']:.2f} write {t['write']:.2f}", flush=True)  # fmt: skip
for name, pairs in rows.items():
    ratio = statistics.median(m / e for m, e in pairs)
    extra = statistics.median(e - m for m, e in pairs) / len(files) * 1000
    print(f"{name} median ratio {ratio:.3f} median explain - model per image {extra:.1f} ms")
