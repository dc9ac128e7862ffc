"""Peak resident memory of ``vitflow explain`` against the number of images: a run of 2,000 images
should need no more memory than a run of 100 (within 10 %).

Each run is a fresh ``vitflow explain`` process (demo ViT, 224 px scenes, the command line's
defaults: on the CPU no DataLoader worker, writer threads, chunks of 512); it reports its own peak
resident set (``VmHWM``: ``getrusage`` would count the benchmark's memory it was forked from).

    python benchmarks/explain_memory.py          # 100 and 2,000 scenes; default outputs, maps only
    python benchmarks/explain_memory.py --counts 100,500 --modes maps
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from vitflow.data.scenes import write_scenes

CHILD = """
import json, sys
from vitflow.cli import main
code = main(sys.argv[1:])
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"code": code, "peak_mb": peak_kb / 1024}))
"""

MODES = {"default": [], "maps": ["--no-images"]}


def run(files: list[Path], out: Path, mode: str) -> dict:
    folder = out.with_name(out.name + "_inputs")
    folder.mkdir()
    for i, path in enumerate(files):  # a folder of links: one input argument, the files untouched
        (folder / f"{i:05d}{path.suffix}").symlink_to(path)
    command = [
        sys.executable,
        "-c",
        CHILD,
        "explain",
        str(folder),
        "--out",
        str(out),
        "--quiet",
        *MODES[mode],
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="100,2000", help="numbers of images, comma-separated")
    parser.add_argument(
        "--modes", default="default,maps", help="default (the bundles) and/or maps (--no-images)"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    modes = args.modes.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_scenes(Path(tmp) / "scenes", max(counts), seed=11)
        files = sorted((Path(tmp) / "scenes" / "images").rglob("*.png"))
        for mode in modes:
            for count in counts:
                peak = run(files[:count], Path(tmp) / f"out_{mode}_{count}", mode)
                rows.append((mode, count, peak["peak_mb"]))
    print("| outputs | images | peak resident memory | × the smallest run |")
    print("|---|---:|---:|---:|")
    for mode, count, peak_mb in rows:
        first = next(r for r in rows if r[0] == mode)
        print(f"| {mode} | {count:,} | {peak_mb:,.0f} MB | {peak_mb / first[2]:.2f} |")


if __name__ == "__main__":
    main()
