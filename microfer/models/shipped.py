"""The pretrained weights that ship with microfer, and what a `--weights` value means.

One resolver for every place that builds an extractor from user input (the CLI's loso /
train, LosoSettings): the shipped macro-expression trunk by default, `none` for the
randomly initialised network (the ablation), or a user's own weights path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from microfer.errors import MicroferError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED_CARD = "mobilevit_xxs_macro.json"
DEFAULT = "default"
NONE = "none"


def default_weights() -> Path:
    """The shipped card (JSON beside its .safetensors): mobilevit_xxs, whole trunk, apex, 64 px."""
    path = WEIGHTS_DIR / SHIPPED_CARD
    if not path.is_file() or not path.with_suffix(".safetensors").is_file():
        raise MicroferError(
            f"{path}: the shipped weights are missing (a broken install? reinstall microfer, "
            f"or pass --weights none / --weights PATH)"
        )
    return path


def resolve_weights(value) -> Optional[str]:
    """A `--weights` value -> what LosoSettings.block_weights / FeatureSetting.block_weights take.

    "default" -> the shipped card's path (str); "none" (any case), None or "" -> None, the
    randomly initialised network (None keeps meaning "no weights", as it always did in
    LosoSettings); anything else -> that path (a weights folder, .json or .safetensors).
    Non-None results are validated as microfer weights first (BundleError naming the
    file), so a typo fails before any feature is extracted.
    """
    from microfer.models.weights import read_block_meta

    text = "" if value is None else str(value).strip()
    if text.lower() in ("", NONE):
        return None
    path = default_weights() if text == DEFAULT else Path(text)
    read_block_meta(path)
    return str(path)
