"""Plugging vitflow into other evaluation tools."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vitflow.engine import DAAM
from vitflow.metrics.localization import upsample_maps


def quantus_explain_func(model: nn.Module, inputs, targets, device=None, **daam_options) -> np.ndarray:
    """A Quantus ``explain_func``: DAAM's final maps at input resolution, ``(B, 1, H, W)`` float32.

    ``quantus.SomeMetric(...)(model=model, x_batch=x, y_batch=y, explain_func=quantus_explain_func,
    explain_func_kwargs={...})``; ``daam_options`` go to :class:`~vitflow.DAAM` (e.g. ``rho``).
    """
    parameter = next(model.parameters())
    x = torch.as_tensor(np.asarray(inputs), dtype=parameter.dtype, device=device or parameter.device)
    target = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=x.device).reshape(-1)
    with DAAM(model, **daam_options) as daam:
        final = daam(x, target=target).final
    return upsample_maps(final, x.shape[-2:])[:, None].cpu().numpy().astype(np.float32)
