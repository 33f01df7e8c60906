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
safetensors + JSON (one format, `WEIGHTS_FORMAT`):
    mv2    the MV2 block                        (file stem mv2_block)
    whole  the whole trunk: stem, stages.0-4 and final_conv   (file stem trunk)
The extractor loads either over the randomly initialised network; with `whole`, every
tensor up to the layer it is cut at is pretrained. Tensors may be stored as float16
(half the file); they are always loaded as float32.

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

import json
from pathlib import Path
from typing import Any, Optional

from microfer._io import file_sha256
from microfer.errors import BundleError, MicroferError
from microfer.models.torch_extractor import TorchExtractor

VARIANTS = ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilevitv2_050")
LAYERS = ("mv2", "stage3", "stage4", "stage5", "final")
MV2_BLOCK_MODULES = ("stem", "stages.0", "stages.1")
TRUNK_MODULES = ("stem", "stages", "final_conv")
SCOPES = {"mv2": MV2_BLOCK_MODULES, "whole": TRUNK_MODULES}
WEIGHTS_STEMS = {"mv2": "mv2_block", "whole": "trunk"}
STORE_DTYPES = ("float32", "float16")
# how many timm `stages` each layer needs after the stem
_STAGES_FOR_LAYER = {"mv2": 2, "stage3": 3, "stage4": 4, "stage5": 5, "final": 5}

WEIGHTS_FORMAT = "microfer.mobilevit_weights"
WEIGHTS_FORMAT_VERSION = 1
# files written before the whole-trunk scope existed (MV2 block only, float32)
LEGACY_FORMAT = "microfer.mv2_block"


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise MicroferError(f"unknown MobileViT variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return variant


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise MicroferError(f"unknown pretraining scope {scope!r}; expected one of {', '.join(SCOPES)}")
    return scope


def create_mobilevit(variant: str, seed: int = 0, in_chans: int = 3):
    """A randomly initialised timm MobileViT without classifier (deterministic in `seed`)."""
    import timm
    import torch

    check_variant(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(variant, pretrained=False, num_classes=0, in_chans=in_chans)
    return model


def in_scope(key: str, scope: str = "mv2") -> bool:
    return any(key == m or key.startswith(m + ".") for m in SCOPES[scope])


def scope_state_dict(model, scope: str = "mv2") -> dict:
    """Parameters and buffers of `scope` of a module holding timm's `stem`, `stages`, `final_conv`."""
    check_scope(scope)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if in_scope(k, scope)}


def mv2_state_dict(model) -> dict:
    """The MV2 block's parameters and buffers of a module holding `stem` and `stages`."""
    return scope_state_dict(model, "mv2")


# ---------------------------------------------------------------------------- weights files
def weights_paths(path, scope: Optional[str] = None) -> tuple[Path, Path]:
    """(safetensors, json) for a weights folder or a .safetensors / .json file path.

    A folder holds <stem>.safetensors + <stem>.json, the stem naming the scope
    (`WEIGHTS_STEMS`); without `scope`, the one present (MV2 block when neither is).
    """
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if scope is not None:
        stem = WEIGHTS_STEMS[check_scope(scope)]
    else:
        found = [s for s in WEIGHTS_STEMS.values() if (path / f"{s}.json").is_file()]
        if len(found) > 1:
            raise BundleError(f"{path}: holds weights of two scopes ({', '.join(f + '.json' for f in found)}); "
                              f"name the .json file to use")
        stem = found[0] if found else WEIGHTS_STEMS["mv2"]
    return path / f"{stem}.safetensors", path / f"{stem}.json"




def save_block_weights(model, out, meta: dict[str, Any], scope: str = "mv2", store_dtype: str = "float32") -> Path:
    """Write `scope` of `model` as OUT/<stem>.safetensors + .json (atomically).

    `meta` must name the `variant`; anything else (representation, labels, data hash,
    epochs, seed...) is recorded as given. `store_dtype` float16 halves the file (floating
    tensors only; loading casts back to float32). Returns the safetensors path.
    """
    import torch
    from safetensors.torch import save_file

    from microfer._io import atomic_path, write_json

    check_variant(meta.get("variant", ""))
    if store_dtype not in STORE_DTYPES:
        raise MicroferError(f"unknown storage dtype {store_dtype!r}; expected one of {', '.join(STORE_DTYPES)}")
    st_path, json_path = weights_paths(out, scope)
    state = scope_state_dict(model, scope)
    if not state:
        raise MicroferError(f"model has no {' / '.join(SCOPES[scope])} modules to save")
    if store_dtype == "float16":
        state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise MicroferError(f"{bad[0]} overflows float16; store the weights as float32")
    with atomic_path(st_path) as tmp:
        save_file(state, str(tmp), metadata={"format": WEIGHTS_FORMAT, "variant": meta["variant"], "scope": scope})
    doc = dict(meta)
    doc.update(
        format=WEIGHTS_FORMAT,
        format_version=WEIGHTS_FORMAT_VERSION,
        scope=scope,
        modules=list(SCOPES[scope]),
        stored_dtype=store_dtype,
        loaded_dtype="float32",
        tensors={k: list(v.shape) for k, v in sorted(state.items())},
        n_parameters=int(sum(v.numel() for k, v in state.items() if v.is_floating_point())),
        weights_file=st_path.name,
        weights_sha256=file_sha256(st_path),
    )
    write_json(json_path, doc)
    return st_path


def read_block_meta(path) -> dict[str, Any]:
    """The JSON of a weights file, validated as ours (raises BundleError otherwise).

    Files of the earlier MV2-block-only format read as scope "mv2", float32.
    """
    st_path, json_path = weights_paths(path)
    if not json_path.is_file():
        raise BundleError(f"{json_path}: weights description (JSON) not found beside the weights")
    if not st_path.is_file():
        raise BundleError(f"{st_path}: weights (safetensors) not found beside {json_path.name}")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{json_path}: not a readable JSON file ({exc})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt == LEGACY_FORMAT and meta.get("format_version") == 1:
        meta = {**meta, "scope": "mv2", "modules": list(meta.get("blocks", [])), "stored_dtype": "float32"}
    elif fmt != WEIGHTS_FORMAT:
        raise BundleError(f"{json_path}: not a microfer MobileViT weights description (format {fmt!r} "
                          f"if any, expected {WEIGHTS_FORMAT!r})")
    elif meta.get("format_version") != WEIGHTS_FORMAT_VERSION:
        raise BundleError(f"{json_path}: format_version {meta.get('format_version')!r} is not supported "
                          f"(expected {WEIGHTS_FORMAT_VERSION})")
    if meta.get("scope") not in SCOPES or list(meta.get("modules", [])) != list(SCOPES[meta["scope"]]):
        raise BundleError(f"{json_path}: scope {meta.get('scope')!r} covering {meta.get('modules')} is not one "
                          f"microfer knows ({', '.join(f'{k}: {list(v)}' for k, v in SCOPES.items())})")
    return meta


def load_block_weights(model, path, variant: str) -> dict[str, Any]:
    """Load pretrained weights (either scope) into `model` (strict), after checking they fit it.

    Refused with a BundleError naming the file when: the JSON says another architecture,
    the safetensors file is not the one the JSON describes (hash), or any key / shape
    differs from the model's modules of that scope. Float16-stored tensors are cast to
    the model's dtype.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st_path, json_path = weights_paths(path)
    meta = read_block_meta(path)
    scope = meta["scope"]
    if meta.get("variant") != variant:
        raise BundleError(f"{json_path}: weights were trained for {meta.get('variant')!r}, "
                          f"the extractor is {variant!r}")
    if file_sha256(st_path) != meta.get("weights_sha256"):
        raise BundleError(f"{st_path}: content does not match the sha256 in {json_path.name} (replaced or tampered with)")
    try:
        state = load_file(str(st_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{st_path}: not a readable safetensors file ({exc})") from None
    expected = scope_state_dict(model, scope)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BundleError(f"{st_path}: keys do not match the {variant} {scope} scope "
                          f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                          f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})")
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        raise BundleError(f"{st_path}: {len(bad)} tensors have the wrong shape for {variant} "
                          f"(e.g. {k}: {got}, expected {want})")
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    leftover = [k for k in result.unexpected_keys]
    if leftover:  # cannot happen after the checks above; guards against a renamed timm module
        raise BundleError(f"{st_path}: keys not used by the model: {leftover[:5]}")
    return meta


def publish_weights(src, dest, notes: dict[str, Any]) -> Path:
    """Copy a weights file + JSON to `dest` (a .json path) with `notes` added to the JSON.

    For shipping a run's output under a descriptive name with its card text (data terms,
    reference numbers). The safetensors bytes -- and so their sha256 -- are unchanged, so
    the run's command still reproduces the shipped file. Returns the new JSON path.
    """
    import shutil

    from microfer._io import atomic_path, write_json

    src_st, src_json = weights_paths(src)
    meta = read_block_meta(src)
    if file_sha256(src_st) != meta.get("weights_sha256"):
        raise BundleError(f"{src_st}: content does not match the sha256 in {src_json.name}")
    dest_st, dest_json = weights_paths(Path(dest).with_suffix(".json"))
    clash = sorted(set(notes) & {"format", "format_version", "scope", "modules", "tensors", "weights_sha256",
                                 "weights_file", "stored_dtype", "variant"})
    if clash:
        raise MicroferError(f"notes may not replace what describes the weights themselves: {', '.join(clash)}")
    with atomic_path(dest_st) as tmp:
        shutil.copyfile(src_st, tmp)
    write_json(dest_json, {**meta, **notes, "weights_file": dest_st.name})
    read_block_meta(dest_json)
    return dest_json


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


class MobileViTExtractor(TorchExtractor):
    """Frozen MobileViT -> pooled features of one layer, numpy in, numpy out.

    Inputs are (N, 3, H, W) float32 arrays (`microfer.representation`), resized to
    `input_size` when they differ. Always eval mode under torch.inference_mode.
    """

    def __init__(
        self,
        variant: str = "mobilevit_xxs",
        layer: str = "final",
        block_weights: Optional[Path] = None,  # pretrained weights of either scope (folder, .json, .safetensors)
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
            self.block_meta = load_block_weights(model, self.block_weights, variant)
        self._net = _truncate(model, layer).to(self.device).eval()
        with torch.inference_mode():
            probe = self._net(torch.zeros(1, 3, self.input_size, self.input_size, device=self.device))
        self.channels = int(probe.shape[1])

    def settings(self) -> dict[str, Any]:
        """What determines the features (used for feature-cache keys)."""
        return {
            "variant": self.variant, "layer": self.layer, "pool": self.pool,
            "input_size": self.input_size, "seed": self.seed,
            "block_weights_sha256": (self.block_meta or {}).get("weights_sha256"),
        }
