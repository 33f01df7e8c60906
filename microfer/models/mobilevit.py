"""timm MobileViT as a frozen feature extractor, with transferable pretrained weights.

The "MobileNetV2 block" (MV2 block) is the part of MobileViT made ONLY of MobileNetV2
inverted-residual blocks (timm `BottleneckBlock`s): the stem conv and the first two
stages, i.e. the timm modules

    stem       3x3 conv, stride 2
    stages.0   1 inverted residual (stride 1)
    stages.1   3 inverted residuals (the first with stride 2)

(output stride 4; 24 channels for mobilevit_xxs, 48 for xs, 64 for s). From stages.2 on
every stage mixes one inverted residual with a MobileViT (transformer) block, so the
MV2 block stops there.

`microfer pretrain` trains one of two SCOPES on macro-expressions and saves it as
safetensors + JSON (`microfer.models.weights`):
    mv2    the MV2 block                        (file stem mv2_block)
    whole  the whole trunk: stem, stages.0-4 and final_conv   (file stem trunk)
The extractor loads either over the randomly initialised network; with `whole`, every
tensor up to the layer it is cut at is pretrained. MobileViT v2 (mobilevitv2_050) has the
same module names (its final_conv is empty), so the same scopes apply.

No hub weights are ever downloaded (pretrained=False). Everything not covered by
pretrained weights is randomly initialised under `torch.manual_seed(seed)` inside a forked
RNG, so the same settings give the same network -- and the same features -- on every
run, without disturbing the caller's global RNG.

Layers (what `layer` may be; stageK is the output of timm `stages[K-1]`, pooled):
    mv2     output of the MV2 block (= stage2)
    stage3  first MobileViT stage (stride 8)
    stage4  stride 16
    stage5  stride 32
    final   the 1x1 `final_conv` after stage5 (timm's num_features channels)
Pooling: "avg" = global average (C features); "grid2" = 2x2 average pooling flattened
(4C features) which keeps where on the face a movement happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from microfer.errors import MicroferError
from microfer.models.registry import register_variants
from microfer.models.torch_extractor import TorchExtractor

VARIANTS = ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilevitv2_050")
LAYERS = ("mv2", "stage3", "stage4", "stage5", "final")
MV2_BLOCK_MODULES = ("stem", "stages.0", "stages.1")
TRUNK_MODULES = ("stem", "stages", "final_conv")
SCOPES = {"mv2": MV2_BLOCK_MODULES, "whole": TRUNK_MODULES}
# how many timm `stages` each layer needs after the stem
_STAGES_FOR_LAYER = {"mv2": 2, "stage3": 3, "stage4": 4, "stage5": 5, "final": 5}


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise MicroferError(
            f"unknown MobileViT variant {variant!r}; expected one of {', '.join(VARIANTS)}"
        )
    return variant


def create_mobilevit(variant: str, seed: int = 0, in_chans: int = 3):
    """A randomly initialised timm MobileViT without classifier (deterministic in `seed`)."""
    import timm
    import torch

    check_variant(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(variant, pretrained=False, num_classes=0, in_chans=in_chans)
    return model


def mv2_state_dict(model) -> dict:
    """The MV2 block's parameters and buffers of a module holding `stem` and `stages`."""
    from microfer.models.weights import scope_state_dict

    return scope_state_dict(model, "mv2", "mobilevit_xxs")


# ---------------------------------------------------------------------------- extractor
def _truncate(model, layer: str):
    """The timm model cut after `layer`, keeping timm's attribute (and state key) names."""
    from torch import nn

    class Truncated(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = model.stem
            # keep only what the layer needs: earlier layers are proportionally cheaper
            self.stages = nn.Sequential(*list(model.stages)[: _STAGES_FOR_LAYER[layer]])
            if layer == "final":
                self.final_conv = model.final_conv

        def forward(self, x):
            x = self.stages(self.stem(x))
            return self.final_conv(x) if layer == "final" else x

    return Truncated()


class MobileViTExtractor(TorchExtractor):
    """Frozen MobileViT -> pooled features of one layer, numpy in, numpy out.

    Inputs are (N, 3, H, W) float32 arrays (`microfer.clip.representation`), resized to
    `input_size` when they differ. Always eval mode under torch.inference_mode.
    """

    def __init__(
        self,
        variant: str = "mobilevit_xxs",
        layer: str = "final",
        block_weights: Optional[
            Path
        ] = None,  # pretrained weights of either scope (folder, .json, .safetensors)
        input_size: int = 128,
        pool: str = "avg",
        seed: int = 0,
        batch_size: int = 32,
        num_threads: Optional[int] = None,
        device: str = "cpu",
    ):
        import torch

        check_variant(variant)
        if layer not in LAYERS:
            raise MicroferError(f"unknown layer {layer!r}; expected one of {', '.join(LAYERS)}")
        if input_size < 32 or input_size % 32:
            raise MicroferError(f"input_size must be a multiple of 32 (>= 32), got {input_size}")
        self._settle(variant, layer, pool, input_size, seed, batch_size, num_threads, device)
        model = create_mobilevit(variant, seed=seed)
        self.block_meta: Optional[dict[str, Any]] = None
        self.block_weights = Path(block_weights) if block_weights else None
        if self.block_weights is not None:
            from microfer.models.weights import load_block_weights

            self.block_meta = load_block_weights(model, self.block_weights, variant)
        self._net = _truncate(model, layer).to(self.device).eval()
        with torch.inference_mode():
            probe = self._net(
                torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)
            )
        self.channels = int(probe.shape[1])


def _create(variant: str, **kwargs) -> MobileViTExtractor:
    return MobileViTExtractor(variant=variant, **kwargs)


register_variants(VARIANTS, "mobilevit", _create, SCOPES)
