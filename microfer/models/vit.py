"""timm Vision Transformers (ViT-Tiny / ViT-Small, patch 16) as frozen feature extractors.

Registered by name beside MobileViT (`microfer.models.list_models()`), so they take part in
the loso grid and in `train` like any network: `--features vit_tiny_patch16_224/apex/final/avg`.
Created with pretrained=False (no download, ever) at `input_size` (a multiple of 16; the loso
default 128 gives an 8 x 8 grid of patch tokens -- the position embedding is made for that
size, so the "_224" of the name is only timm's), randomly initialised under a forked
`torch.manual_seed(seed)` like MobileViT.

`microfer pretrain --variant vit_tiny_patch16_224` trains the whole encoder (scope "whole":
the module `vit`, i.e. patch embedding, class token, position embedding, blocks and final
norm) on macro-expressions (`microfer.models.weights`); the extractor loads those weights.
Weights pretrained at another input size carry over: the position embedding is resampled
(bicubic, timm's `resample_abs_pos_embed`) from the grid it was trained on to this one.

Layers: "mid" (the patch tokens after the first half of the blocks) and "final" (after all
blocks and the final norm). The patch tokens are laid out on their grid as a (C, h, w) map, so
the same poolings apply as to MobileViT: "avg" (mean token) and "grid2" (2 x 2 cells); the
class token is left out.
"""

from __future__ import annotations

import math
from typing import Optional

from microfer.errors import MicroferError
from microfer.models.registry import register_variants
from microfer.models.torch_extractor import TorchExtractor

VARIANTS = ("vit_tiny_patch16_224", "vit_small_patch16_224")
LAYERS = ("mid", "final")
PATCH = 16
SCOPES = {"whole": ("vit",)}
POS_EMBED_KEY = "vit.pos_embed"


def create_vit_encoder(variant: str, input_size: int, seed: int = 0):
    """A randomly initialised timm ViT without classifier for `input_size` px inputs
    (deterministic in `seed`); its forward gives the class token's features."""
    import timm
    import torch

    if variant not in VARIANTS:
        raise MicroferError(
            f"unknown ViT variant {variant!r}; expected one of {', '.join(VARIANTS)}"
        )
    if input_size < 2 * PATCH or input_size % PATCH:
        raise MicroferError(
            f"input_size must be a multiple of {PATCH} (>= {2 * PATCH}) for {variant}, got {input_size}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(variant, pretrained=False, num_classes=0, img_size=input_size)


def fit_position_embedding(state: dict, expected: dict) -> dict:
    """`state` with its position embedding resampled to the grid of `expected`'s (an
    `adapt` of `load_block_weights`); anything else -- or a shape it cannot read as a
    square grid plus a class token -- is left for the shape check to report."""
    old, new = state.get(POS_EMBED_KEY), expected.get(POS_EMBED_KEY)
    if old is None or new is None or old.shape == new.shape or old.shape[-1] != new.shape[-1]:
        return state
    old_side, new_side = math.isqrt(old.shape[1] - 1), math.isqrt(new.shape[1] - 1)
    if old_side**2 + 1 != old.shape[1] or new_side**2 + 1 != new.shape[1]:
        return state
    from timm.layers import resample_abs_pos_embed

    resampled = resample_abs_pos_embed(
        old.float(), [new_side, new_side], [old_side, old_side], num_prefix_tokens=1
    )
    return {**state, POS_EMBED_KEY: resampled.to(old.dtype)}


def create_vit(
    variant: str, input_size: int, layer: str = "final", seed: int = 0, block_weights=None
):
    """(network, weights card or None): a timm ViT for `input_size` px inputs -- pretrained
    weights loaded when given -- cut after `layer`, whose forward gives the patch tokens as
    a (N, C, h, w) map."""
    from torch import nn

    if layer not in LAYERS:
        raise MicroferError(f"unknown ViT layer {layer!r}; expected one of {', '.join(LAYERS)}")
    vit = create_vit_encoder(variant, input_size, seed)
    side = input_size // PATCH

    class PatchTokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens :]
            return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)

    net, meta = PatchTokens(), None
    if block_weights:
        from microfer.models.weights import load_block_weights

        meta = load_block_weights(net, block_weights, variant, adapt=fit_position_embedding)
    if layer == "mid":  # the later blocks and the final norm are not needed: drop their weights too
        vit.blocks = vit.blocks[: len(vit.blocks) // 2]
        vit.norm = nn.Identity()
    return net, meta


class ViTExtractor(TorchExtractor):
    """Frozen timm ViT -> pooled patch tokens of one layer, numpy in, numpy out."""

    def __init__(
        self,
        variant: str = "vit_tiny_patch16_224",
        layer: str = "final",
        input_size: int = 128,
        pool: str = "avg",
        seed: int = 0,
        batch_size: int = 32,
        num_threads: Optional[int] = None,
        device: str = "cpu",
        block_weights=None,
    ):
        from pathlib import Path

        self._settle(variant, layer, pool, input_size, seed, batch_size, num_threads, device)
        self.block_weights = Path(block_weights) if block_weights else None
        net, self.block_meta = create_vit(variant, self.input_size, layer, seed, self.block_weights)
        self._net = net.to(self.device).eval()
        self.channels = int(self._net.vit.num_features)


def _create(variant: str, **kwargs) -> ViTExtractor:
    return ViTExtractor(variant=variant, **kwargs)


# timm ViTs, randomly initialised unless pretrained weights are given; names as timm spells them
register_variants(VARIANTS, "vit", _create, SCOPES)
