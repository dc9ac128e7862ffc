"""Plugging vitflow into other evaluation tools."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vitflow.explainer.daam import DAAM
from vitflow.metrics.localization import upsample_maps


def quantus_explain_func(model: nn.Module, inputs, targets, device=None, **daam_options) -> np.ndarray:
    """A Quantus ``explain_func``: DAAM's final maps at input resolution, ``(B, 1, H, W)`` float32.

    ``quantus.SomeMetric(...)(model=model, x_batch=x, y_batch=y, explain_func=quantus_explain_func,
    explain_func_kwargs={...})``; ``daam_options`` go to ``DAAM`` (e.g. ``rho``).
    """
    parameter = next(model.parameters())
    x = torch.as_tensor(np.asarray(inputs), dtype=parameter.dtype, device=device or parameter.device)
    target = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=x.device).reshape(-1)
    with DAAM(model, **daam_options) as daam:
        final = daam(x, target=target).final
    return upsample_maps(final, (x.shape[-2], x.shape[-1]))[:, None].cpu().numpy().astype(np.float32)


def _final_at_input(daam: DAAM, x: torch.Tensor, target) -> torch.Tensor:
    """DAAM's final maps upsampled to the input, ``(B, H, W)`` float32."""
    return upsample_maps(daam(x, target=target).final, (x.shape[-2], x.shape[-1]))


class DAAMAttribution:
    """captum's interface: ``DAAMAttribution(model).attribute(inputs, target=...)`` returns
    ``(B, 1, H, W)`` attributions at the input resolution, on the inputs' device and dtype, so code
    written for ``LayerGradCam`` or ``IntegratedGradients`` swaps DAAM in.

    ``target`` follows captum: an int for every example, a list or ``(B,)`` tensor of one class
    per example, or ``None`` (DAAM explains the predicted class; captum requires a target for
    multi-class outputs). ``inputs`` may be a tensor or a 1-tuple (the result has the same form).
    ``internal_batch_size`` splits the examples into passes of that many (the results are the
    same, memory is bounded). ``additional_forward_args`` are not supported: DAAM calls the model
    on the images alone. The DAAM options (``rho``, ``start_block``, ...) go to the constructor.
    """

    def __init__(self, forward_func: nn.Module, **daam_options) -> None:
        if not isinstance(forward_func, nn.Module):
            raise TypeError("DAAMAttribution needs the ViT itself (an nn.Module), not a function of it")
        self.forward_func = forward_func
        self.daam_options = daam_options

    def attribute(
        self, inputs, target=None, additional_forward_args=None, internal_batch_size=None, **kwargs
    ):
        if additional_forward_args is not None:
            raise ValueError(
                "DAAMAttribution: additional_forward_args are not supported (DAAM runs model(inputs))"
            )
        if kwargs:
            raise TypeError(
                f"DAAMAttribution.attribute got unexpected arguments: {', '.join(sorted(kwargs))}"
            )
        as_tuple = isinstance(inputs, tuple)
        if as_tuple and len(inputs) != 1:
            raise ValueError(f"DAAM explains one image input; got a tuple of {len(inputs)} inputs")
        x = inputs[0] if as_tuple else inputs
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(
                f"inputs must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}"
            )
        batch = x.shape[0]
        if isinstance(target, tuple):
            raise ValueError(
                "tuple targets index multi-dimensional outputs; DAAM explains (B, K) outputs: use ints"
            )
        if isinstance(target, torch.Tensor) and target.numel() == 1:
            target = int(target.reshape(()))
        if isinstance(target, list | torch.Tensor) and len(target) != batch:
            raise ValueError(
                f"got {len(target)} targets for {batch} examples; give one per example or one int"
            )
        size = internal_batch_size or batch
        parts = []
        with DAAM(self.forward_func, **self.daam_options) as daam:
            for start in range(0, batch, size):
                chunk = target[start : start + size] if isinstance(target, list | torch.Tensor) else target
                parts.append(_final_at_input(daam, x[start : start + size], chunk))
        attributions = torch.cat(parts)[:, None].to(device=x.device, dtype=x.dtype)
        return (attributions,) if as_tuple else attributions

    def has_convergence_delta(self) -> bool:  # captum's Attribution interface
        return False


class DAAMCam:
    """pytorch-grad-cam's interface: ``DAAMCam(model)(input_tensor=x, targets=[...])`` returns
    ``(B, H, W)`` float32 maps in [0, 1] at the input resolution (min-max per image, as grad-cam
    scales its CAMs), which ``show_cam_on_image`` accepts.

    ``targets``: grad-cam's target objects (``ClassifierOutputTarget``, any callable on one
    image's output), one per image; ``None`` explains the predicted class. ``target_layers`` and
    ``reshape_transform`` are accepted and unused (DAAM reads every block and knows the token
    grid), so a ``GradCAM(model=..., target_layers=...)`` line changes to ``DAAMCam`` alone.
    Usable as a context manager, as grad-cam's CAMs are.
    """

    def __init__(self, model: nn.Module, target_layers=None, reshape_transform=None, **daam_options) -> None:
        self.model = model
        self.daam_options = daam_options
        self.outputs: torch.Tensor | None = None

    def __call__(
        self, input_tensor: torch.Tensor, targets=None, aug_smooth: bool = False, eigen_smooth: bool = False
    ):
        if aug_smooth or eigen_smooth:
            raise NotImplementedError(
                "DAAMCam has no aug_smooth / eigen_smooth (they are Grad-CAM techniques)"
            )
        parameter = next(self.model.parameters())
        x = input_tensor.to(parameter.device)
        with DAAM(self.model, **self.daam_options) as daam:
            result = daam(x, target=targets)
        self.outputs = result.logits
        maps = upsample_maps(result.final, (x.shape[-2], x.shape[-1]))
        low = maps.amin(dim=(1, 2), keepdim=True)
        maps = (maps - low) / (1e-7 + (maps - low).amax(dim=(1, 2), keepdim=True))
        return maps.detach().cpu().numpy().astype(np.float32)

    def __enter__(self) -> DAAMCam:
        return self

    def __exit__(self, *exc) -> None:
        return None
