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


for _variant in ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s"):
    register_model(_variant)(_mobilevit_factory(_variant))
