"""The model registry, timm-style: each family module registers its names here.

A name maps to a factory returning an extractor (`__call__(inputs (N,3,H,W) float32) ->
(N, D) float32`, `feature_dim`, `settings()`) and, for networks that `microfer pretrain`
can train, the backbone's weight SCOPES (scope -> module names). This module imports
nothing of the families, so the weights format can ask for scopes without a cycle.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

from microfer.errors import MicroferError


@dataclass(frozen=True)
class Entry:
    factory: Callable[..., Any]
    family: str  # "mobilevit", "vit", "descriptor", ...
    scopes: Optional[dict[str, tuple[str, ...]]] = None  # None: nothing to pretrain
    # a network that reads one input size and always loads its own shipped weights (the
    # FER teacher): the grid gives it that size, and the feature-cache key their sha256
    input_size: Optional[int] = None
    weights_sha256: Optional[Callable[[], str]] = None


_REGISTRY: dict[str, Entry] = {}


def register_model(
    name: str,
    family: str = "other",
    scopes: Optional[dict[str, tuple[str, ...]]] = None,
    input_size: Optional[int] = None,
    weights_sha256: Optional[Callable[[], str]] = None,
):
    """Decorator: register a factory under `name` (a later registration replaces it)."""

    def wrap(factory):
        _REGISTRY[name] = Entry(factory, family, scopes, input_size, weights_sha256)
        return factory

    return wrap


def register_variants(names, family: str, create, scopes=None) -> None:
    """Register `create(name, **kwargs)` under each of `names` (a family's variants)."""
    for name in names:
        register_model(name, family, scopes)(functools.partial(create, name))


def list_models(
    pattern: str = "*", family: Optional[str] = None, pretrainable: bool = False
) -> list[str]:
    """Registered names matching `pattern`, optionally of one family or only those with scopes."""
    return sorted(
        n
        for n, e in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern)
        and (family is None or e.family == family)
        and (not pretrainable or e.scopes)
    )


def model_family(name: str) -> str:
    return _entry(name).family


def fixed_input_size(name: str) -> Optional[int]:
    """The one input size a network reads (None: any, the run's --input-size)."""
    return _entry(name).input_size


def shipped_weights_sha256(name: str) -> Optional[str]:
    """sha256 of the weights `name` always loads (None: random init or --weights decide)."""
    get = _entry(name).weights_sha256
    return get() if get else None


def _entry(name: str) -> Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MicroferError(
            f"unknown model {name!r}; available: {', '.join(list_models())}"
        ) from None


def create_extractor(name: str, **kwargs):
    """Create the extractor registered as `name`; kwargs go to its factory.

    For the MobileViT names: layer, block_weights, input_size, pool, seed, batch_size,
    num_threads, device (see `MobileViTExtractor`).
    """
    return _entry(name).factory(**kwargs)


def backbone_scopes(name: str) -> dict[str, tuple[str, ...]]:
    """Scope -> module names of a pretrainable backbone (MicroferError for any other name)."""
    scopes = _REGISTRY[name].scopes if name in _REGISTRY else None
    if not scopes:
        names = ", ".join(list_models(pretrainable=True))
        raise MicroferError(f"{name!r} cannot be pretrained; pretrainable backbones: {names}")
    return scopes
