"""Chefer et al.'s ImageNet-segmentation protocol (``evaluate --protocol chefer``) on a synthetic
``gtsegs_ijcv.mat``: held-out demo scenes (stream seed 11, as the variants study reports on)
written in that file's layout, every registered method, the demo ViT. The real file is not
reachable from CI; this is the same code path on data whose masks are exact.

    python benchmarks/chefer_synthetic.py OUT [--n 100] [--also attnlrp_gamma_0.25,daam_lrp_gamma_0.25]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitflow.cli import main
from vitflow.data.gtsegs import write_gtsegs
from vitflow.data.scenes import generate_scene
from vitflow.methods.run import method_names

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--also", default="", help="methods beyond the registered names (attnlrp_gamma_0.25)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scenes = [generate_scene(args.seed, i) for i in range(args.n)]
    mat = write_gtsegs(args.out / "gtsegs_ijcv.mat", [s.image for s in scenes], [s.masks[0] for s in scenes])
    methods = ",".join(method_names() + [m for m in args.also.split(",") if m])
    sys.exit(main(["evaluate", "--data", str(mat), "--protocol", "chefer", "--methods", methods,
                   "--out", str(args.out / "eval"), "--quiet"]))  # fmt: skip
