"""A model by name: one file per family (loader, catalogue rows, small test build, name listing)
registered with ``register_family``; checkpoints; the bundled demo model
(``vitflow.models.demo``, needs timm)."""

# importing the families registers them, in the order the catalogue lists them
# isort: off
from vitflow.models import timm, hf, torchvision, open_clip  # noqa: F401
# isort: on
from vitflow.models.checkpoints import ModelLoadError
from vitflow.models.family import FAMILIES, Architecture, Family, LoadedModel, register_family
from vitflow.models.load import load_model, model_prefixes, split_spec
from vitflow.models.timm import class_token_backbone_kwargs

__all__ = [
    "FAMILIES",
    "Architecture",
    "Family",
    "LoadedModel",
    "ModelLoadError",
    "class_token_backbone_kwargs",
    "load_model",
    "model_prefixes",
    "register_family",
    "split_spec",
]
