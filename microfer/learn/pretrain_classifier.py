"""The network `pretrain` trains: the pretrained part of a backbone + a classification head.

Attribute names match timm's (stem, stages, final_conv; a ViT under `vit`), so the state
keys of the pretrained part are those of the full model and of the extractor. Every head
is drawn from its own seeded stream (seed + 1) inside a forked RNG, so the backbone's
weights do not depend on the head and the global stream is left as it was.
"""

from __future__ import annotations

from microfer.learn.starts import LITE0, lite0_classifier, pooled_head
from microfer.models.mobilevit import create_mobilevit
from microfer.models.vit import VARIANTS as VIT_VARIANTS
from microfer.models.vit import create_vit_encoder
from microfer.models.weights import check_scope


def build_classifier(
    variant: str,
    n_classes: int,
    seed: int = 0,
    head_channels: int = 128,
    dropout: float = 0.2,
    scope: str = "mv2",
    input_size: int = 128,
):
    """`scope` of `variant` + a classification head (deterministic in `seed`).

    Attribute names match timm's (stem, stages, final_conv; a ViT under `vit`), so the
    state keys of the pretrained part are those of the full model and of the extractor.
    `input_size` matters to ViTs only (their position embedding is made for it).
    """
    check_scope(scope, variant)
    if variant == LITE0:
        return lite0_classifier(n_classes, seed, dropout)
    if variant in VIT_VARIANTS:
        return _vit_classifier(variant, n_classes, seed, dropout, input_size)
    if scope == "mv2":
        return _mv2_classifier(variant, n_classes, seed, head_channels, dropout)
    return _trunk_classifier(variant, n_classes, seed, dropout)


def _vit_classifier(variant: str, n_classes: int, seed: int, dropout: float, input_size: int):
    """The ViT encoder + dropout, linear on its class token (timm's ViT head)."""
    import torch
    from torch import nn

    class ViTClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = create_vit_encoder(variant, input_size, seed=seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                self.head = nn.Sequential(
                    nn.Dropout(dropout), nn.Linear(self.vit.num_features, n_classes)
                )

        def forward(self, x):
            return self.head(self.vit(x))

    return ViTClassifier()


def _mv2_classifier(variant: str, n_classes: int, seed: int, head_channels: int, dropout: float):
    """MobileViT's MV2 block (stem, stages.0, stages.1) + 1x1 conv, BN, SiLU, pool, linear."""
    import torch
    from torch import nn

    class MV2Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            base = create_mobilevit(variant, seed=seed)
            self.stem = base.stem
            self.stages = nn.Sequential(base.stages[0], base.stages[1])
            channels = base.feature_info[1]["num_chs"]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                self.head = nn.Sequential(
                    nn.Conv2d(channels, head_channels, 1, bias=False),
                    nn.BatchNorm2d(head_channels),
                    nn.SiLU(),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                    nn.Dropout(dropout),
                    nn.Linear(head_channels, n_classes),
                )

        def forward(self, x):
            return self.head(self.stages(self.stem(x)))

    return MV2Classifier()


def _trunk_classifier(variant: str, n_classes: int, seed: int, dropout: float):
    """The whole MobileViT trunk up to final_conv + pool, dropout, linear (timm's head)."""
    from torch import nn

    class TrunkClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            base = create_mobilevit(variant, seed=seed)
            self.stem, self.stages, self.final_conv = base.stem, base.stages, base.final_conv
            self.head = pooled_head(base.num_features, n_classes, dropout, seed)

        def trunk(self, x):
            return self.final_conv(self.stages(self.stem(x)))

        def forward(self, x):
            return self.head(self.trunk(x))

    return TrunkClassifier()
