"""Why the mixing variants behave as they do on a model (the README's variants study): how much
the rollout of the blocks before the last mixes the tokens, where its [class] row peaks, and how
close generic attention's propagation stays to the identity.

    python benchmarks/variants_why.py runs/real_study --model vit_small_patch14_dinov2 \\
        --checkpoint runs/real_study/model.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from vitflow.adapters import resolve_adapter
from vitflow.data.items import read_items
from vitflow.methods.inputs import MethodInputs
from vitflow.methods.mixing import generic_mixing, rollout_mixing
from vitflow.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a study folder (its heldout/ scenes are read)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--n", type=int, default=16)
    args = parser.parse_args()
    loaded = load_model(args.model, args.checkpoint)
    items = read_items(args.root / "heldout")[: args.n]
    x = torch.stack([loaded.preprocessing(Image.open(i.path).convert("RGB")) for i in items])
    target = torch.tensor([i.target for i in items])
    trace = MethodInputs(resolve_adapter(loaded.model), x, target).trace
    prefix = trace.prefix_tokens
    received = (
        trace.attention[0].mean(dim=1)[:, :, prefix:].mean(dim=1)
    )  # attention each patch gets in block 1
    favourite = received.argmax(dim=-1)
    rollout = rollout_mixing(trace)[-1]
    generic = generic_mixing(trace)[-1]
    patches = slice(prefix, None)
    top3 = received.topk(3, dim=-1).indices
    share = torch.gather(rollout[:, patches, patches].mean(dim=1), 1, top3).sum(dim=-1)
    print(f"{len(items)} held-out scenes, {args.model}")
    print("rollout of blocks 1..L-1: [class] row peaks on the patch block 1 attends to most in "
          f"{(rollout[:, 0, patches].argmax(-1) == favourite).float().mean():.3f} of images")  # fmt: skip
    print(f"  mean share of a patch token's mass on block 1's 3 most-attended patches: {share.mean():.3f} "
          f"(uniform: {3 / received.shape[-1]:.3f})")  # fmt: skip
    for name, mixing in (("rollout", rollout), ("generic attention", generic)):
        diagonal = torch.diagonal(mixing[:, patches, patches], dim1=1, dim2=2).mean()
        print(f"{name} mixing before the last block: mean diagonal over patches {diagonal:.3f} (identity: 1)")


if __name__ == "__main__":
    main()
