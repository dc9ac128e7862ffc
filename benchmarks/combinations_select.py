"""How `daam_lrp_x_rollout` was chosen: the combinations tried on the variants study's selection
split (stream seed 5, 60 scenes; never the held-out one), registered here for one `evaluate` run.

    vitflow scenes --out OUT/select --n 60 --seed 5
    python benchmarks/combinations_select.py OUT/select OUT/eval_combinations

Each candidate joins DAAM on CP-LRP's backward (`daam_lrp`) or DAAM with an attention baseline:
the geometric mean or the mean of the two min-max-normalised maps, or the DAAM relevance carried
to the input patches by generic or rollout mixing (in full, at half strength, from the last three
blocks), and Gaussian smoothing of the chosen one. The kept one is registered as
`daam_lrp_x_rollout` (`vitflow.methods.mixing`).

A second round (issue 23, after the gamma rule) joins `daam_lrp` with the relevance the same
CP-LRP backward carries to the input: at the patch tokens (AttnLRP), or at the pixels, as Guided
Grad-CAM joins Grad-CAM with pixels: the product of the map at the pixels and the pixel relevance
raised by a floor or smoothed by a Gaussian of sigma 0.5-4 px, with and without the gamma rule. The
kept one (sigma 0.75 px, no gamma: ahead of the best baseline on three metrics with the smallest
shortfall on the fourth) is registered as `daam_lrp_guided` (`vitflow.methods.lrp`); its control,
the smoothed pixel relevance alone, stays a candidate here.

    python benchmarks/combinations_select.py OUT/select OUT/eval_round2 NAME ...   # only these
    python benchmarks/combinations_select.py OUT/heldout OUT/eval NAME ... daam_lrp_guided -- --sanity 20
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from vitflow.cli import main
from vitflow.core.maps import minmax, upsample
from vitflow.methods.attention import attention_rollout, generic_attention
from vitflow.methods.lrp import attnlrp, attnlrp_relevance
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


def _smooth(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of ``(B, H, W)`` maps, any sigma (a kernel of 6 sigma + 1 taps), the
    edges replicated: what the round-two probes were scored with (``vitflow.core.maps.gaussian_blur``,
    which the registered ``daam_lrp_guided`` uses, reflects them)."""
    radius = max(1, round(3 * sigma))
    k = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(k**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.pad(m.float()[:, None], (radius,) * 4, mode="replicate")
    return F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))[:, 0]


def _guided(inputs, gamma: float, floor: float = 0.0, sigma: float = 0.0) -> torch.Tensor:
    """``daam_lrp_gamma``'s map at the pixels times CP-LRP's pixel relevance (smoothed by
    ``sigma``, raised by ``floor`` after min-max), as Guided Grad-CAM joins Grad-CAM and pixels."""
    pixels = _cp_lrp_pixels(inputs, gamma)
    pixels = _smooth(pixels, sigma) if sigma else pixels
    patches = upsample(inputs.daam_lrp_gamma(gamma).maps[:, -1], inputs.x.shape[-2:])
    return _mm(patches) * (floor + _mm(pixels))


def _cp_lrp_pixels(inputs, gamma: float = 0.0) -> torch.Tensor:
    """CP-LRP input x gradient at the pixels (AttnLRP's pixel map), positive part."""
    _, pixels = attnlrp_relevance(inputs.adapter.model, inputs.x, inputs.target, inputs.adapter, gamma)
    return pixels.clamp_min(0)


def _attnlrp(inputs, gamma: float = 0.0) -> torch.Tensor:
    return attnlrp(inputs.adapter.model, inputs.x, inputs.target, inputs.adapter, gamma).clamp_min(0)


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
    # a second round (after the gamma rule): daam_lrp agreed with the relevance the same CP-LRP
    # backward carries to the input, at the patch tokens (AttnLRP) or at the pixels
    "lrp_x_attnlrp": lambda i: _geo(_lrp(i), _attnlrp(i)),
    "lrp_gamma_x_attnlrp_gamma": lambda i: _geo(i.daam_lrp_gamma(0.25).maps[:, -1], _attnlrp(i, 0.25)),
    "lrp_x_rollout_mixed_x_attnlrp": lambda i: _geo(
        _lrp(i), _carried(i, rollout_mixing(i.trace)), _attnlrp(i)
    ),
    "lrp_x_cp_lrp_pixels": lambda i: _geo(upsample(_lrp(i), i.x.shape[-2:]), _cp_lrp_pixels(i)),
    "lrp_gamma_x_cp_lrp_gamma_pixels": lambda i: _geo(
        upsample(i.daam_lrp_gamma(0.25).maps[:, -1], i.x.shape[-2:]), _cp_lrp_pixels(i, 0.25)
    ),
    "guided_floor_0.25": lambda i: _guided(i, 0.25, floor=0.25),
    "guided_floor_1": lambda i: _guided(i, 0.25, floor=1.0),
    "guided_smooth_2": lambda i: _guided(i, 0.25, sigma=2.0),
    "guided_smooth_4": lambda i: _guided(i, 0.25, sigma=4.0),
    "guided_smooth_2_floor_0.25": lambda i: _guided(i, 0.25, floor=0.25, sigma=2.0),
    "guided_smooth_1": lambda i: _guided(i, 0.25, sigma=1.0),
    "guided_smooth_3": lambda i: _guided(i, 0.25, sigma=3.0),
    "guided_gamma_0_smooth_2": lambda i: _guided(i, 0.0, sigma=2.0),
    "guided_gamma_0.05_smooth_2": lambda i: _guided(i, 0.05, sigma=2.0),
    **{
        f"guided_gamma_{g}_smooth_{sigma}": (lambda i, g=g, sigma=sigma: _guided(i, g, sigma=sigma))
        for g in (0.0, 0.25)
        for sigma in (0.5, 0.75, 1.0)
    },
    # the control of the kept one (registered as daam_lrp_guided): the smoothed pixels alone
    "cp_lrp_pixels_smooth_0.75": lambda i: _smooth(_cp_lrp_pixels(i), 0.75),
    "lrp_x_input_x_gradient": lambda i: _geo(
        upsample(_lrp(i), i.x.shape[-2:]), (i.x * i.trace.input_grad).sum(1).clamp_min(0)
    ),
}

if __name__ == "__main__":
    # after OUT: only these candidates, and registered methods (e.g. daam_lrp_guided) beside them
    # after "--": extra evaluate arguments (e.g. --sanity 20)
    given, extra = sys.argv[1:], []
    if "--" in given:
        given, extra = given[: given.index("--")], given[given.index("--") + 1 :]
    data, out, *only = given
    tried = {name: CANDIDATES[name] for name in only if name in CANDIDATES} if only else CANDIDATES
    registered = [name for name in only if name not in CANDIDATES]
    for name, fn in tried.items():
        register_method(f"probe_{name}", full_attention=True, lrp=True, input_grad=True)(fn)
    methods = "daam,daam_lrp,generic_attention,rollout,attnlrp," + ",".join(f"probe_{n}" for n in tried)
    if only:
        beside = ["input_x_gradient", "daam_lrp_gamma_0.25", "attnlrp_gamma_0.25", *registered]
        methods += "," + ",".join(beside)
    metrics = "pointing_game,energy,perturbation_pos,insertion"
    sys.exit(main(["evaluate", "--data", data, "--out", out, "--methods", methods, "--metrics", metrics,
                   "--per-block-metrics", "", "--quiet", *extra]))  # fmt: skip
