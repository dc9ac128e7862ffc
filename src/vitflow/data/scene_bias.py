"""Does anything but shape and pattern predict a scene's class? Linear probes on colour
histograms and on raw pixels; both should score near chance (1 / number of classes)."""

from __future__ import annotations

import numpy as np
import torch


def colour_histograms(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 -> ``(n, bins**3)`` normalised joint RGB histograms."""
    quantised = (images.astype(np.int64) * bins) // 256
    codes = (quantised[..., 0] * bins + quantised[..., 1]) * bins + quantised[..., 2]
    codes = codes.reshape(len(images), -1)
    hist = np.stack([np.bincount(row, minlength=bins**3) for row in codes]).astype(np.float64)
    return hist / hist.sum(axis=1, keepdims=True)


def pixel_features(images: np.ndarray, side: int = 24) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 -> ``(n, side*side*3)`` area-downsampled pixels in [0, 1]."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0
    return torch.nn.functional.adaptive_avg_pool2d(x, side).flatten(1).numpy()


def linear_probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    classes: int, weight_decay: float = 1e-3, steps: int = 300,
) -> float:  # fmt: skip
    """Held-out accuracy of an L2-regularised multinomial logistic regression (standardised inputs)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    xs = torch.from_numpy((train_x - mean) / std)
    xt = torch.from_numpy((test_x - mean) / std)
    ys = torch.from_numpy(train_y).long()
    weights = torch.zeros(xs.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (
            torch.nn.functional.cross_entropy(xs @ weights + bias, ys) + weight_decay * weights.square().sum()
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predictions = (xt @ weights + bias).argmax(1).numpy()
    return float((predictions == test_y).mean())
