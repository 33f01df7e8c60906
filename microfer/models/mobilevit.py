"""timm MobileViT as a frozen feature extractor, with a transferable MobileNetV2 block.

The "MobileNetV2 block" (MV2 block) is the part of MobileViT made ONLY of MobileNetV2
inverted-residual blocks (timm `BottleneckBlock`s): the stem conv and the first two
stages, i.e. the timm modules

    stem       3x3 conv, stride 2
    stages.0   1 inverted residual (stride 1)
    stages.1   3 inverted residuals (the first with stride 2)

(output stride 4; 24 channels for mobilevit_xxs, 48 for xs, 64 for s). From stages.2 on
every stage mixes one inverted residual with a MobileViT (transformer) block, so the
MV2 block stops there. It is the part `microfer pretrain` trains on macro-expressions
and saves as safetensors + JSON; the extractor loads it over the randomly initialised
network.

No hub weights are ever downloaded (pretrained=False). Everything not covered by MV2
block weights is randomly initialised under `torch.manual_seed(seed)` inside a forked
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

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from microfer.errors import BundleError, MicroferError

VARIANTS = ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s")
LAYERS = ("mv2", "stage3", "stage4", "stage5", "final")
POOLS = ("avg", "grid2")
MV2_BLOCK_MODULES = ("stem", "stages.0", "stages.1")
# how many timm `stages` each layer needs after the stem
_STAGES_FOR_LAYER = {"mv2": 2, "stage3": 3, "stage4": 4, "stage5": 5, "final": 5}

WEIGHTS_FORMAT = "microfer.mv2_block"
WEIGHTS_FORMAT_VERSION = 1
WEIGHTS_STEM = "mv2_block"


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise MicroferError(f"unknown MobileViT variant {variant!r}; expected one of {', '.join(VARIANTS)}")
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


def is_mv2_key(key: str) -> bool:
    return any(key == m or key.startswith(m + ".") for m in MV2_BLOCK_MODULES)


def mv2_state_dict(model) -> dict:
    """The MV2 block's parameters and buffers of a module holding `stem` and `stages`."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if is_mv2_key(k)}


# ---------------------------------------------------------------------------- weights files
def weights_paths(path) -> tuple[Path, Path]:
    """(safetensors, json) for a weights folder or a .safetensors / .json file path."""
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    return path / f"{WEIGHTS_STEM}.safetensors", path / f"{WEIGHTS_STEM}.json"


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_block_weights(model, out, meta: dict[str, Any]) -> Path:
    """Write the MV2 block of `model` as OUT/mv2_block.safetensors + .json (atomically).

    `meta` must name the `variant`; anything else (representation, labels, data hash,
    epochs, seed...) is recorded as given. Returns the safetensors path.
    """
    from safetensors.torch import save_file

    from microfer._io import atomic_path, write_json

    check_variant(meta.get("variant", ""))
    st_path, json_path = weights_paths(out)
    state = mv2_state_dict(model)
    if not state:
        raise MicroferError("model has no MobileNetV2 block (stem / stages.0 / stages.1) to save")
    with atomic_path(st_path) as tmp:
        save_file(state, str(tmp), metadata={"format": WEIGHTS_FORMAT, "variant": meta["variant"]})
    doc = dict(meta)
    doc.update(
        format=WEIGHTS_FORMAT,
        format_version=WEIGHTS_FORMAT_VERSION,
        blocks=list(MV2_BLOCK_MODULES),
        tensors={k: list(v.shape) for k, v in sorted(state.items())},
        weights_file=st_path.name,
        weights_sha256=file_sha256(st_path),
    )
    write_json(json_path, doc)
    return st_path


def read_block_meta(path) -> dict[str, Any]:
    """The JSON of a weights file, validated as ours (raises BundleError otherwise)."""
    st_path, json_path = weights_paths(path)
    if not json_path.is_file():
        raise BundleError(f"{json_path}: MV2 block description (JSON) not found beside the weights")
    if not st_path.is_file():
        raise BundleError(f"{st_path}: MV2 block weights (safetensors) not found")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{json_path}: not a readable JSON file ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != WEIGHTS_FORMAT:
        raise BundleError(f"{json_path}: not a microfer MV2 block description (format {meta.get('format')!r} "
                          f"if any, expected {WEIGHTS_FORMAT!r})")
    if meta.get("format_version") != WEIGHTS_FORMAT_VERSION:
        raise BundleError(f"{json_path}: format_version {meta.get('format_version')!r} is not supported "
                          f"(expected {WEIGHTS_FORMAT_VERSION})")
    return meta


def load_block_weights(model, path, variant: str) -> dict[str, Any]:
    """Load MV2 block weights into `model` (strict), after checking they fit it.

    Refused with a BundleError naming the file when: the JSON says another architecture,
    the safetensors file is not the one the JSON describes (hash), or any key / shape
    differs from the model's MV2 block.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st_path, json_path = weights_paths(path)
    meta = read_block_meta(path)
    if meta.get("variant") != variant:
        raise BundleError(f"{json_path}: weights were trained for {meta.get('variant')!r}, "
                          f"the extractor is {variant!r}")
    if list(meta.get("blocks", [])) != list(MV2_BLOCK_MODULES):
        raise BundleError(f"{json_path}: weights cover blocks {meta.get('blocks')}, expected {list(MV2_BLOCK_MODULES)}")
    if file_sha256(st_path) != meta.get("weights_sha256"):
        raise BundleError(f"{st_path}: content does not match the sha256 in {json_path.name} (replaced or tampered with)")
    try:
        state = load_file(str(st_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{st_path}: not a readable safetensors file ({exc})") from None
    expected = mv2_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BundleError(f"{st_path}: keys do not match the {variant} MV2 block "
                          f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                          f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})")
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        raise BundleError(f"{st_path}: {len(bad)} tensors have the wrong shape for {variant} "
                          f"(e.g. {k}: {got}, expected {want})")
    result = model.load_state_dict(state, strict=False)
    leftover = [k for k in result.unexpected_keys]
    if leftover:  # cannot happen after the checks above; guards against a renamed timm module
        raise BundleError(f"{st_path}: keys not used by the model: {leftover[:5]}")
    return meta


# ---------------------------------------------------------------------------- extractor
def _truncate(model, layer: str):
    """The timm model cut after `layer`, keeping timm's attribute (and state key) names."""
    from torch import nn

    class Truncated(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = model.stem
            # keep only what the layer needs: earlier layers are proportionally cheaper
            self.stages = nn.Sequential(*list(model.stages)[:_STAGES_FOR_LAYER[layer]])
            if layer == "final":
                self.final_conv = model.final_conv

        def forward(self, x):
            x = self.stages(self.stem(x))
            return self.final_conv(x) if layer == "final" else x

    return Truncated()


class MobileViTExtractor:
    """Frozen MobileViT -> pooled features of one layer, numpy in, numpy out.

    Inputs are (N, 3, H, W) float32 arrays (`microfer.representation`), resized to
    `input_size` when they differ. Always eval mode under torch.inference_mode.
    """

    def __init__(
        self,
        variant: str = "mobilevit_xxs",
        layer: str = "final",
        block_weights: Optional[Path] = None,
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
        if pool not in POOLS:
            raise MicroferError(f"unknown pooling {pool!r}; expected one of {', '.join(POOLS)}")
        if input_size < 32 or input_size % 32:
            raise MicroferError(f"input_size must be a multiple of 32 (>= 32), got {input_size}")
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.variant, self.layer, self.pool = variant, layer, pool
        self.input_size, self.seed, self.batch_size = int(input_size), int(seed), int(batch_size)
        self.device = torch.device(device)
        model = create_mobilevit(variant, seed=seed)
        self.block_meta: Optional[dict[str, Any]] = None
        self.block_weights = Path(block_weights) if block_weights else None
        if self.block_weights is not None:
            self.block_meta = load_block_weights(model, self.block_weights, variant)
        self._net = _truncate(model, layer).to(self.device).eval()
        with torch.inference_mode():
            probe = self._net(torch.zeros(1, 3, self.input_size, self.input_size, device=self.device))
        self.channels = int(probe.shape[1])

    @property
    def feature_dim(self) -> int:
        return self.channels * (4 if self.pool == "grid2" else 1)

    def settings(self) -> dict[str, Any]:
        """What determines the features (used for feature-cache keys)."""
        return {
            "variant": self.variant, "layer": self.layer, "pool": self.pool,
            "input_size": self.input_size, "seed": self.seed,
            "block_weights_sha256": (self.block_meta or {}).get("weights_sha256"),
        }

    def state_dict(self) -> dict:
        """Weights of the network up to `layer` (timm key names, CPU tensors), e.g. for a model bundle."""
        return {k: v.detach().cpu().contiguous() for k, v in self._net.state_dict().items()}

    def load_state_dict(self, state: dict, source: str = "network weights") -> None:
        """Load weights saved by `state_dict()` of an extractor with the same settings (strict).

        Raises BundleError naming `source` when keys or shapes differ.
        """
        expected = self._net.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise BundleError(f"{source}: keys do not match {self.variant} up to {self.layer} "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        bad = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
        if bad:
            raise BundleError(f"{source}: {len(bad)} tensors have the wrong shape for {self.variant} "
                              f"(e.g. {bad[0]}: {tuple(state[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)})")
        self._net.load_state_dict({k: v.to(self.device) for k, v in state.items()}, strict=True)
        self._net.eval()

    def _pool(self, fmap):
        import torch.nn.functional as F

        if self.pool == "avg":
            return fmap.mean(dim=(2, 3))
        return F.adaptive_avg_pool2d(fmap, 2).flatten(1)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = np.asarray(inputs, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise MicroferError(f"extractor expects inputs of shape (N, 3, H, W), got {x.shape}")
        out = np.zeros((x.shape[0], self.feature_dim), np.float32)
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(x[start:start + self.batch_size])).to(self.device)
                if batch.shape[-2:] != (self.input_size, self.input_size):
                    batch = F.interpolate(batch, size=(self.input_size, self.input_size),
                                          mode="bilinear", align_corners=False)
                out[start:start + len(batch)] = self._pool(self._net(batch)).float().cpu().numpy()
        return out

    extract = __call__
