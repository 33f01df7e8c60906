"""timm Vision Transformers (ViT-Tiny / ViT-Small, patch 16) as frozen feature extractors.

Registered by name beside MobileViT (`microfer.models.list_models()`), so they take part in
the loso grid and in `train` like any network: `--features vit_tiny_patch16_224/apex/final/avg`.
Created with pretrained=False (no download, ever) at `input_size` (a multiple of 16; the loso
default 128 gives an 8 x 8 grid of patch tokens -- the position embedding is made for that
size, so the "_224" of the name is only timm's), randomly initialised under a forked
`torch.manual_seed(seed)` like MobileViT. microfer ships no ViT weights.

Layers: "mid" (the patch tokens after the first half of the blocks) and "final" (after all
blocks and the final norm). The patch tokens are laid out on their grid as a (C, h, w) map, so
the same poolings apply as to MobileViT: "avg" (mean token) and "grid2" (2 x 2 cells); the
class token is left out.
"""
from __future__ import annotations

from typing import Any, Optional

from microfer.errors import MicroferError
from microfer.models.torch_extractor import TorchExtractor

VARIANTS = ("vit_tiny_patch16_224", "vit_small_patch16_224")
LAYERS = ("mid", "final")
PATCH = 16


def create_vit(variant: str, input_size: int, layer: str = "final", seed: int = 0):
    """A randomly initialised timm ViT for `input_size` px inputs, cut after `layer`, whose
    forward gives the patch tokens as a (N, C, h, w) map."""
    import timm
    import torch
    from torch import nn

    if variant not in VARIANTS:
        raise MicroferError(f"unknown ViT variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if layer not in LAYERS:
        raise MicroferError(f"unknown ViT layer {layer!r}; expected one of {', '.join(LAYERS)}")
    if input_size < 2 * PATCH or input_size % PATCH:
        raise MicroferError(f"input_size must be a multiple of {PATCH} (>= {2 * PATCH}) for {variant}, got {input_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = timm.create_model(variant, pretrained=False, num_classes=0, img_size=input_size)
    if layer == "mid":  # the later blocks and the final norm are not needed: drop their weights too
        vit.blocks = vit.blocks[:len(vit.blocks) // 2]
        vit.norm = nn.Identity()
    side = input_size // PATCH

    class PatchTokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
            return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)

    return PatchTokens()


class ViTExtractor(TorchExtractor):
    """Frozen timm ViT -> pooled patch tokens of one layer, numpy in, numpy out."""

    def __init__(self, variant: str = "vit_tiny_patch16_224", layer: str = "final", input_size: int = 128,
                 pool: str = "avg", seed: int = 0, batch_size: int = 32, num_threads: Optional[int] = None,
                 device: str = "cpu", block_weights=None):
        if block_weights:
            raise MicroferError(f"{block_weights}: pretrained weights are MobileViT weights; {variant} has none "
                                f"(it is randomly initialised)")
        self._settle(variant, layer, pool, input_size, seed, batch_size, num_threads, device)
        self._net = create_vit(variant, self.input_size, layer, seed).to(self.device).eval()
        self.channels = int(self._net.vit.num_features)

    def settings(self) -> dict[str, Any]:
        """What determines the features (used for feature-cache keys)."""
        return {"variant": self.variant, "layer": self.layer, "pool": self.pool, "input_size": self.input_size,
                "seed": self.seed, "block_weights_sha256": None}
