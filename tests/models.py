"""Small models for the tests."""

import timm
import torch


def make_timm(name, **kwargs):
    """A real timm architecture, random weights, small input size to keep CPU tests fast."""
    kwargs.setdefault("img_size", 64)
    model = timm.create_model(name, pretrained=False, **kwargs)
    # timm initialises some weights to zero (e.g. positional embeddings, heads in some modes):
    # spread every parameter so that maps are non-trivial and differences would show.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()
