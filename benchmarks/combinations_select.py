"""How `daam_lrp_x_rollout` was chosen: the combinations tried on the variants study's selection
split (stream seed 5, 60 scenes; never the held-out one), registered here for one `evaluate` run.

    vitflow scenes --out OUT/select --n 60 --seed 5
    python benchmarks/combinations_select.py OUT/select OUT/eval_combinations

Each candidate joins DAAM on CP-LRP's backward (`daam_lrp`) or DAAM with an attention baseline:
the geometric mean or the mean of the two min-max-normalised maps, or the DAAM relevance carried
to the input patches by generic or rollout mixing (in full, at half strength, from the last three
blocks), and Gaussian smoothing of the chosen one. The kept one is registered as
`daam_lrp_x_rollout` (`vitflow.methods.mixing`).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from vitflow.cli import main
from vitflow.core.maps import minmax
from vitflow.methods.attention import attention_rollout, generic_attention
from vitflow.methods.mixing import generic_mixing, mixed_block_maps, rollout_mixing
from vitflow.registry import register_method


def _mm(m: torch.Tensor) -> torch.Tensor:
    return minmax(m.float().flatten(1)).reshape(m.shape)


def _geo(*maps: torch.Tensor) -> torch.Tensor:
    out = _mm(maps[0])
    for m in maps[1:]:
        out = out * _mm(m)
    return out ** (1 / len(maps))


def _carried(inputs, mixing, last: int | None = None) -> torch.Tensor:
    r = inputs.daam_lrp
    flow = mixed_block_maps(r.relevance, mixing, r.prefix_tokens, r.grid)
    return flow[:, -last:].sum(1) if last else flow.sum(1)


def _blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-2, 3, dtype=torch.float32)
    g = torch.exp(-(k**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.pad(m.float()[:, None], (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(F.conv2d(x, g.view(1, 1, 1, 5)), g.view(1, 1, 5, 1))
    return x[:, 0]


def _lrp(inputs) -> torch.Tensor:
    return inputs.daam_lrp.maps[:, -1]


def _half(mixing: list[torch.Tensor]) -> list[torch.Tensor]:
    return [0.5 * m + 0.5 * mixing[0] for m in mixing]


CANDIDATES = {
    "daam_x_generic": lambda i: _geo(i.daam.maps[:, -1], generic_attention(i.trace)),
    "lrp_x_generic": lambda i: _geo(_lrp(i), generic_attention(i.trace)),
    "lrp_x_rollout": lambda i: _geo(_lrp(i), attention_rollout(i.trace)),
    "lrp_x_generic_x_rollout": lambda i: _geo(
        _lrp(i), generic_attention(i.trace), attention_rollout(i.trace)
    ),
    "lrp_plus_generic": lambda i: 0.5 * (_mm(_lrp(i)) + _mm(generic_attention(i.trace))),
    "lrp_generic_mixed": lambda i: _carried(i, generic_mixing(i.trace)),
    "lrp_rollout_mixed": lambda i: _carried(i, rollout_mixing(i.trace)),
    "lrp_half_rollout_mixed": lambda i: _carried(i, _half(rollout_mixing(i.trace))),
    "lrp_rollout_mixed_last3": lambda i: _carried(i, rollout_mixing(i.trace), last=3),
    "lrp_x_lrp_rollout_mixed": lambda i: _geo(_lrp(i), _carried(i, rollout_mixing(i.trace))),  # kept
    "lrp_plus_lrp_rollout_mixed": lambda i: 0.5 * (_mm(_lrp(i)) + _mm(_carried(i, rollout_mixing(i.trace)))),
    "kept_smoothed_0.6": lambda i: _blur(_geo(_lrp(i), _carried(i, rollout_mixing(i.trace))), 0.6),
    "kept_smoothed_1.0": lambda i: _blur(_geo(_lrp(i), _carried(i, rollout_mixing(i.trace))), 1.0),
}

if __name__ == "__main__":
    data, out = sys.argv[1], sys.argv[2]
    for name, fn in CANDIDATES.items():
        register_method(f"probe_{name}", full_attention=True, lrp=True)(fn)
    methods = "daam,daam_lrp,generic_attention,rollout,attnlrp," + ",".join(f"probe_{n}" for n in CANDIDATES)
    metrics = "pointing_game,energy,perturbation_pos,insertion"
    sys.exit(main(["evaluate", "--data", data, "--out", out, "--methods", methods, "--metrics", metrics,
                   "--per-block-metrics", "", "--quiet"]))  # fmt: skip
