"""Feature extractors by name, timm-style: `list_models()`, `create_extractor(name, **kw)`.

A registered name maps to a factory returning an object with `__call__(inputs (N,3,H,W)
float32) -> (N, D) float32`, `feature_dim` and `settings()`. Importing this package does
not import torch (the CLI stays fast); creating an extractor does.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable

from microfer.errors import MicroferError

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_model(name: str):
    """Decorator: register a factory under `name` (a later registration replaces it)."""

    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_extractor(name: str, **kwargs):
    """Create the extractor registered as `name`; kwargs go to its factory.

    For the MobileViT names: layer, block_weights, input_size, pool, seed, batch_size,
    num_threads, device (see `MobileViTExtractor`).
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise MicroferError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
    return factory(**kwargs)


def _mobilevit_factory(variant: str):
    def factory(**kwargs):
        from microfer.models.mobilevit import MobileViTExtractor

        return MobileViTExtractor(variant=variant, **kwargs)

    factory.__name__ = variant
    return factory


for _variant in ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilevitv2_050"):
    register_model(_variant)(_mobilevit_factory(_variant))


def _vit_factory(variant: str):
    def factory(**kwargs):
        from microfer.models.vit import ViTExtractor

        return ViTExtractor(variant=variant, **kwargs)

    factory.__name__ = variant
    return factory


# timm ViTs, randomly initialised (microfer/models/vit.py); names as timm spells them
for _variant in ("vit_tiny_patch16_224", "vit_small_patch16_224"):
    register_model(_variant)(_vit_factory(_variant))


def _descriptor_factory(name: str):
    def factory(**_network_settings):
        # layer / pool / weights / seed describe networks; a descriptor has none of them
        from microfer.models.descriptors import DESCRIPTORS, FlowDescriptor

        return FlowDescriptor(*DESCRIPTORS[name])

    factory.__name__ = name
    return factory


# training-free motion descriptors of the flow input (microfer/models/descriptors.py)
DESCRIPTOR_NAMES = ("flow_raw", "flow_grid14", "flow_grid7", "flow_hoof4")
for _name in DESCRIPTOR_NAMES:
    register_model(_name)(_descriptor_factory(_name))


def is_descriptor(name: str) -> bool:
    """True for the training-free descriptors (no layers, weights or seed; `flow` input only)."""
    return name in DESCRIPTOR_NAMES


# the shipped pretrained weights and the `--weights` resolver (microfer/models/shipped.py)
from microfer.models.shipped import default_weights, resolve_weights  # noqa: E402,F401
