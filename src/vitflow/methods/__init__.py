"""Explanation methods for ViTs besides DAAM itself, and DAAM's variants, for comparison; each
method is registered where it is defined (``vitflow.registry.METHODS``)."""

# importing these registers the methods, in the order the tables list them: the DAAM variants
# and the mixing-aware variants, the attention baselines (2020-2021), then the token-weighted
# DAAM variants with the TokenTM-style baseline, LeGrad and CP-LRP (with DAAM on its backward)
from vitflow.methods import daam, mixing  # noqa: F401, I001
from vitflow.methods.attention import (
    attention_gradcam,
    attention_rollout,
    generic_attention,
    gradcam_tokens,
    input_x_gradient,
    raw_attention,
)
from vitflow.methods import token_weighting, legrad, lrp  # noqa: F401, E402, I001
from vitflow.methods.inputs import MethodInputs
from vitflow.methods.trace import AttentionTrace, trace_attention
from vitflow.registry import METHODS


def baseline_names() -> list[str]:
    """The registered methods that are not DAAM or one of its variants, in registration order."""
    return [name for name in METHODS.names() if not name.startswith("daam")]


__all__ = [
    "METHODS",
    "baseline_names",
    "AttentionTrace",
    "MethodInputs",
    "attention_gradcam",
    "attention_rollout",
    "generic_attention",
    "gradcam_tokens",
    "input_x_gradient",
    "raw_attention",
    "trace_attention",
]
