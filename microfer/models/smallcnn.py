"""Small CNNs on the 28x28 flow (u, v, strain), STSTNet-sized: a few thousand parameters.

These are not frozen extractors: they are trained on micro-expressions INSIDE each LOSO
fold (`microfer.learn.finetune`). This module only says what the networks are; importing
it does not import torch (the layers are built on demand).

STSTNet (Liong et al., 2019) runs three 3x3 conv branches (3, 5 and 8 channels, padding
2) on the same input, each followed by ReLU, BatchNorm, 3x3/3 max pooling, dropout 0.5
and 2x2 average pooling; the 16 maps are flattened into one linear layer. Every step
after the convolution acts per channel, so the three branches are exactly ONE 3x3 conv
with 16 output channels -- that is how it is written here (same function, fewer calls).

    ststnet     STSTNet as published: 28x28 in, 30x30 maps, pooled to 16 x 5 x 5 = 400
                features, 3 classes: 1,683 parameters
    ststnet14   the same layers on the flow area-averaged to 14x14 (4.6x fewer
                multiply-adds: what 2 shared CPU cores can train in every fold), padding
                1, 2x2/2 max pooling, no average pooling: 16 x 7 x 7 = 784 features, 2,835
                parameters with 3 classes

An ensemble of M members (seeds) is one module whose conv has M x 16 output channels
and whose linear layer is M separate (features -> classes) maps: every member sees the
same batches but has its own initialisation, dropout masks and parameters, so training
them together equals training them one by one, at the cost of one larger matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

from microfer.errors import MicroferError
from microfer.models.registry import register_variants


@dataclass(frozen=True)
class SmallCNNSpec:
    input_size: int  # the flow is area-averaged to this size first
    channels: int
    padding: int
    max_pool: int  # kernel = stride; padding 1 when it does not divide the map
    avg_pool: int  # 1 = none

    def map_size(self) -> int:
        conv = self.input_size + 2 * self.padding - 2
        pad = 1 if conv % self.max_pool else 0
        pooled = (conv + 2 * pad - self.max_pool) // self.max_pool + 1
        return pooled // self.avg_pool

    def n_features(self) -> int:
        return self.channels * self.map_size() ** 2


VARIANTS = {
    "ststnet": SmallCNNSpec(input_size=28, channels=16, padding=2, max_pool=3, avg_pool=2),
    "ststnet14": SmallCNNSpec(input_size=14, channels=16, padding=1, max_pool=2, avg_pool=1),
}


def spec_of(variant: str) -> SmallCNNSpec:
    if variant not in VARIANTS:
        raise MicroferError(f"unknown small CNN {variant!r}; expected one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def build_ensemble(variant: str, n_classes: int, seeds):
    """An untrained M-member ensemble (torch module); member m is initialised under seeds[m]."""
    from microfer.models.smallcnn_net import SmallCNNEnsemble

    return SmallCNNEnsemble(spec_of(variant), int(n_classes), tuple(int(s) for s in seeds))


def _create(variant: str, n_classes: int = 3, seeds=(0,), **_unused):
    return build_ensemble(variant, n_classes, seeds)


register_variants(VARIANTS, "smallcnn", _create)
