"""Pretrained backbone weights on disk: safetensors + JSON, one format for every backbone.

`microfer pretrain` trains a SCOPE of a backbone -- a named set of its modules -- and saves
it here; the extractors load it over their randomly initialised network. Each backbone
module declares its scopes (`SCOPES`: scope -> module names, state keys of its modules
start with them):

    MobileViT v1 / v2 (mobilevit.py)  mv2    stem, stages.0, stages.1   (file stem mv2_block)
                                       whole  stem, stages, final_conv   (file stem trunk)
    ViT (vit.py)                       whole  vit (the encoder)          (file stem trunk)

The JSON names the variant, the scope, every tensor's shape and the safetensors' sha256;
a file is refused (BundleError naming it) when any of them does not fit the network it is
loaded into. Tensors may be stored as float16 (half the file); they are always loaded as
float32. The format name keeps its first spelling (`microfer.mobilevit_weights`), so the
files written before ViTs could be pretrained -- the shipped trunk among them -- still load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from microfer.errors import BundleError, MicroferError
from microfer.io import atomic_path, file_sha256, write_json
from microfer.models.registry import backbone_scopes

WEIGHTS_STEMS = {"mv2": "mv2_block", "whole": "trunk"}
STORE_DTYPES = ("float32", "float16")
WEIGHTS_FORMAT = "microfer.mobilevit_weights"
WEIGHTS_FORMAT_VERSION = 1
# files written before the whole-trunk scope existed (MobileViT MV2 block only, float32)
LEGACY_FORMAT = "microfer.mv2_block"


def default_scope(variant: str) -> str:
    """The scope `microfer pretrain` trains when none is named: the first the backbone
    declares (MobileViT's MV2 block, a ViT's whole encoder)."""
    return next(iter(backbone_scopes(variant)))


def check_scope(scope: str, variant: str) -> str:
    scopes = backbone_scopes(variant)
    if scope not in scopes:
        raise MicroferError(
            f"unknown pretraining scope {scope!r} for {variant}; expected one of {', '.join(scopes)}"
        )
    return scope


def scope_state_dict(model, scope: str, variant: str) -> dict:
    """Parameters and buffers of `scope` of a module holding the backbone's modules under
    their timm names (CPU tensors)."""
    modules = backbone_scopes(variant)[check_scope(scope, variant)]
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if any(k == m or k.startswith(m + ".") for m in modules)
    }


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
        if scope not in WEIGHTS_STEMS:
            raise MicroferError(
                f"unknown pretraining scope {scope!r}; expected one of {', '.join(WEIGHTS_STEMS)}"
            )
        stem = WEIGHTS_STEMS[scope]
    else:
        found = [s for s in WEIGHTS_STEMS.values() if (path / f"{s}.json").is_file()]
        if len(found) > 1:
            raise BundleError(
                f"{path}: holds weights of two scopes ({', '.join(f + '.json' for f in found)}); "
                f"name the .json file to use"
            )
        stem = found[0] if found else WEIGHTS_STEMS["mv2"]
    return path / f"{stem}.safetensors", path / f"{stem}.json"


def save_block_weights(
    model, out, meta: dict[str, Any], scope: str = "mv2", store_dtype: str = "float32"
) -> Path:
    """Write `scope` of `model` as OUT/<stem>.safetensors + .json (atomically).

    `meta` must name the `variant`; anything else (representation, labels, data hash,
    epochs, seed...) is recorded as given. `store_dtype` float16 halves the file (floating
    tensors only; loading casts back to float32). Returns the safetensors path.
    """
    import torch
    from safetensors.torch import save_file

    variant = meta.get("variant", "")
    modules = backbone_scopes(variant)[check_scope(scope, variant)]
    if store_dtype not in STORE_DTYPES:
        raise MicroferError(
            f"unknown storage dtype {store_dtype!r}; expected one of {', '.join(STORE_DTYPES)}"
        )
    st_path, json_path = weights_paths(out, scope)
    state = scope_state_dict(model, scope, variant)
    if not state:
        raise MicroferError(f"model has no {' / '.join(modules)} modules to save")
    if store_dtype == "float16":
        state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise MicroferError(f"{bad[0]} overflows float16; store the weights as float32")
    with atomic_path(st_path) as tmp:
        save_file(
            state, str(tmp), metadata={"format": WEIGHTS_FORMAT, "variant": variant, "scope": scope}
        )
    doc = dict(meta)
    doc.update(
        format=WEIGHTS_FORMAT,
        format_version=WEIGHTS_FORMAT_VERSION,
        scope=scope,
        modules=list(modules),
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
        meta = {
            **meta,
            "scope": "mv2",
            "modules": list(meta.get("blocks", [])),
            "stored_dtype": "float32",
        }
    elif fmt != WEIGHTS_FORMAT:
        raise BundleError(
            f"{json_path}: not a microfer backbone weights description (format {fmt!r} "
            f"if any, expected {WEIGHTS_FORMAT!r})"
        )
    elif meta.get("format_version") != WEIGHTS_FORMAT_VERSION:
        raise BundleError(
            f"{json_path}: format_version {meta.get('format_version')!r} is not supported "
            f"(expected {WEIGHTS_FORMAT_VERSION})"
        )
    try:
        scopes = backbone_scopes(str(meta.get("variant")))
    except MicroferError as exc:
        raise BundleError(f"{json_path}: {exc}") from None
    if meta.get("scope") not in scopes or list(meta.get("modules", [])) != list(
        scopes[meta["scope"]]
    ):
        raise BundleError(
            f"{json_path}: scope {meta.get('scope')!r} covering {meta.get('modules')} is not one "
            f"microfer knows for {meta['variant']} "
            f"({', '.join(f'{k}: {list(v)}' for k, v in scopes.items())})"
        )
    return meta


def load_block_weights(
    model, path, variant: str, adapt: Optional[Callable[[dict, dict], dict]] = None
) -> dict[str, Any]:
    """Load pretrained weights (any scope) into `model` (strict), after checking they fit it.

    `adapt(state, expected)` may reshape what a backbone can carry over between input
    sizes (a ViT's position embedding) before the checks. Refused with a BundleError
    naming the file when: the JSON says another architecture, the safetensors file is not
    the one the JSON describes (hash), or any key / shape differs from the model's modules
    of that scope. Float16-stored tensors are cast to the model's dtype.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st_path, json_path = weights_paths(path)
    meta = read_block_meta(path)
    scope = meta["scope"]
    if meta.get("variant") != variant:
        raise BundleError(
            f"{json_path}: weights were trained for {meta.get('variant')!r}, "
            f"the extractor is {variant!r}"
        )
    if file_sha256(st_path) != meta.get("weights_sha256"):
        raise BundleError(
            f"{st_path}: content does not match the sha256 in {json_path.name} (replaced or tampered with)"
        )
    try:
        state = load_file(str(st_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{st_path}: not a readable safetensors file ({exc})") from None
    expected = scope_state_dict(model, scope, variant)
    if adapt is not None:
        state = adapt(state, expected)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BundleError(
            f"{st_path}: keys do not match the {variant} {scope} scope "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    bad = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if bad:
        k, got, want = bad[0]
        raise BundleError(
            f"{st_path}: {len(bad)} tensors have the wrong shape for {variant} "
            f"(e.g. {k}: {got}, expected {want})"
        )
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

    src_st, src_json = weights_paths(src)
    meta = read_block_meta(src)
    if file_sha256(src_st) != meta.get("weights_sha256"):
        raise BundleError(f"{src_st}: content does not match the sha256 in {src_json.name}")
    dest_st, dest_json = weights_paths(Path(dest).with_suffix(".json"))
    clash = sorted(
        set(notes)
        & {
            "format",
            "format_version",
            "scope",
            "modules",
            "tensors",
            "weights_sha256",
            "weights_file",
            "stored_dtype",
            "variant",
        }
    )
    if clash:
        raise MicroferError(
            f"notes may not replace what describes the weights themselves: {', '.join(clash)}"
        )
    with atomic_path(dest_st) as tmp:
        shutil.copyfile(src_st, tmp)
    write_json(dest_json, {**meta, **notes, "weights_file": dest_st.name})
    read_block_meta(dest_json)
    return dest_json
