"""The pretraining checkpoint: OUT/checkpoint.safetensors + checkpoint.json.

It keeps the model AND the AdamW moments, and refuses to resume a run whose settings,
labels or data differ, so a resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from microfer.errors import MicroferError
from microfer.io import atomic_path, file_sha256, write_json

CHECKPOINT_FORMAT = "microfer.pretrain_checkpoint"


def save_checkpoint(model, optimizer, out: Path, doc: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                tensors[f"optim.{names[id(p)]}.{k}"] = v.detach().cpu().contiguous().clone()
    st_path = out / "checkpoint.safetensors"
    with atomic_path(st_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT})
    write_json(
        out / "checkpoint.json",
        {**doc, "format": CHECKPOINT_FORMAT, "weights_sha256": file_sha256(st_path)},
    )


def load_checkpoint(model, optimizer, out: Path, expect: dict[str, Any]) -> dict[str, Any]:
    """Restore `model` and `optimizer` from OUT; their description must match `expect`."""
    from safetensors.torch import load_file

    json_path, st_path = out / "checkpoint.json", out / "checkpoint.safetensors"
    doc = _read_description(json_path, st_path)
    for k in ("settings", "labels", "data_hash", "test_hash"):
        if doc.get(k) != expect[k]:
            raise MicroferError(
                f"{json_path}: cannot resume, the checkpoint's {k} differ from this run's "
                f"(checkpoint {str(doc.get(k))[:120]}, now {str(expect[k])[:120]})"
            )
    tensors = load_file(str(st_path))
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True
    )
    device = next(model.parameters()).device
    for n, p in model.named_parameters():
        state = {
            k.rsplit(".", 1)[1]: v
            for k, v in tensors.items()
            if k.startswith(f"optim.{n}.") and "." not in k[len(f"optim.{n}.") :]
        }
        if state:
            # AdamW keeps `step` on the CPU unless capturable
            optimizer.state[p] = {k: (v if k == "step" else v.to(device)) for k, v in state.items()}
    return doc


def _read_description(json_path: Path, st_path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MicroferError(f"{json_path}: unreadable checkpoint description ({exc})") from None
    if doc.get("format") != CHECKPOINT_FORMAT or not st_path.is_file():
        raise MicroferError(
            f"{json_path}: not a microfer pretraining checkpoint (or its safetensors is missing)"
        )
    if file_sha256(st_path) != doc.get("weights_sha256"):
        raise MicroferError(f"{st_path}: does not match the sha256 in {json_path.name}")
    return doc
