"""The model zoo: feature extractors created by name, timm-style.

`list_models()`, `create_extractor(name, **kw)`; each family module (mobilevit, vit,
descriptors) registers its names in `microfer.models.registry` when it is imported, which
this package does. Importing it does not import torch (the CLI stays fast); creating an
extractor does. Training code lives in `microfer.learn`, not here.
"""

from __future__ import annotations

from microfer.models import (  # noqa: F401  (they register their names)
    descriptors,
    efficientnet,
    fer_apex,
    mobilevit,
    smallcnn,
    vit,
)
from microfer.models.registry import (  # noqa: F401
    backbone_scopes,
    create_extractor,
    fixed_input_size,
    list_models,
    model_family,
    register_model,
    shipped_weights_sha256,
)
from microfer.models.shipped import default_weights, resolve_weights  # noqa: F401

DESCRIPTOR_NAMES = tuple(descriptors.DESCRIPTORS)  # in the order grids list them


def is_descriptor(name: str) -> bool:
    """True for the training-free descriptors (no layers, weights or seed; `flow` input only)."""
    return name in DESCRIPTOR_NAMES
