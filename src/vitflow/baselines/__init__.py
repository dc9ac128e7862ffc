"""Other explanation methods for ViTs, for comparison with DAAM; each self-contained."""

from vitflow.baselines.methods import (
    attention_gradcam,
    attention_rollout,
    generic_attention,
    gradcam_tokens,
    input_x_gradient,
    raw_attention,
)
from vitflow.baselines.trace import AttentionTrace, trace_attention

__all__ = [
    "AttentionTrace",
    "attention_gradcam",
    "attention_rollout",
    "generic_attention",
    "gradcam_tokens",
    "input_x_gradient",
    "raw_attention",
    "trace_attention",
]
