"""The method as pure tensor math; see ``vitflow.core.daam``."""

from vitflow.core.daam import (
    accumulate,
    apply_rho,
    block_map,
    class_attention_row,
    class_token_output,
    minmax_per_map,
    token_contributions,
    token_relevance,
)

__all__ = [
    "accumulate",
    "apply_rho",
    "block_map",
    "class_attention_row",
    "class_token_output",
    "minmax_per_map",
    "token_contributions",
    "token_relevance",
]
