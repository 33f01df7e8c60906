"""The feature and SVM grids of `loso` and `train`, and the parsing of their entries.

A grid entry is a name as the report shows it ("flow_grid14/flow", "mobilevit_xxs/apex/
final/avg", "A + B"); `feature_grid` turns a grid (or `LosoSettings.features`) into the
FeatureSetting / FusedSetting / fold-trained recipes that `learn.evaluate` extracts.
"""

from __future__ import annotations

from typing import Any, Optional

from microfer.errors import MicroferError
from microfer.learn.classify import FULL_PARAM_GRID, SMALL_PARAM_GRID
from microfer.learn.features import FeatureSetting, FusedSetting
from microfer.learn.finetune import CNNRecipe
from microfer.learn.finetune_vit import is_finetune_step, recipe_from_name
from microfer.learn.loso_settings import LosoSettings
from microfer.models import (
    fixed_input_size,
    is_descriptor,
    list_models,
    model_family,
    resolve_weights,
)
from microfer.models.weights import read_block_meta

# Candidates are written as the names the report shows: "descriptor/representation",
# "variant/representation/layer/pool" for a MobileViT (pretrained where the weights fit
# its variant and representation, random init elsewhere), "A + B" for a fusion.
# flow_raw is a candidate too: where the flow's zero is reliable and the head still (clean
# synthetic clips) the plain flow can win, and the inner folds see that
MOTION_DESCRIPTORS = ["flow_raw/flow", "flow_grid14/flow", "flow_grid7/flow", "flow_hoof4/flow"]
# the apex face read by the shipped FER teacher (models/fer_apex.py): grey 64 px, face and
# mirror averaged, its last module's maps + its 7 logits pooled
APEX_TEACHER = "fer_mini_xception/apex/final/avg"
FEATURE_GRIDS: dict[str, list[str]] = {
    # The default: training-free motion descriptors (the strongest features on the real
    # composite inputs) and the FER teacher on the apex face (alone 0.53 UF1 on the 207 real
    # samples, the macro MobileViT trunk 0.37, lower on both halves; docs/results.md).
    # Their fusion is in "full" only: with the MobileViT trunk it scored below the descriptor,
    # with the teacher it gains on one half of the subjects only.
    "small": [*MOTION_DESCRIPTORS, APEX_TEACHER],
    "motion": list(MOTION_DESCRIPTORS),
    # the floor: the flow itself, downsampled, straight into the SVM
    "raw": ["flow_raw/flow"],
    # microfer 0.1's default: networks on the flow and on onset/apex grey levels. stage4
    # with 2x2 pooling: with a randomly initialised network the deepest layers wash out
    # small local movements, and global pooling forgets WHERE on the face they were.
    "network": ["mobilevit_xxs/flow/stage4/grid2", "mobilevit_xxs/onset_apex/stage4/grid2"],
    # the small CNN trained inside each fold (microfer.learn.finetune), alone: no inner
    # CV (nothing to choose), one ensemble per outer fold
    "cnn": ["ststnet14/flow"],
    # the CNN as one more candidate beside the descriptors: inner CV trains it in every
    # inner fold too (inner_splits + 1 trainings per outer fold), hence not the default
    "motion_cnn": [*MOTION_DESCRIPTORS, "ststnet14/flow"],
    # the motion descriptors STACKED (learn.stack): per-view SVM scores combined by a
    # logistic regression fitted on inner out-of-fold scores; the stack is used only where
    # its cross-fitted inner score beats the best single member's
    "stack": list(MOTION_DESCRIPTORS),
    "stack_cnn": [*MOTION_DESCRIPTORS, "ststnet14/flow"],
    # the descriptors and the FER teacher's reading of the apex face, stacked: motion and
    # appearance are different views, which is where a stack can add something
    "stack_apex": [*MOTION_DESCRIPTORS, APEX_TEACHER],
    "full": [
        *MOTION_DESCRIPTORS,
        "ststnet14/flow",
        # MobileViT fine-tuned inside every (inner and outer) fold: ~75 CPU min a run
        "mobilevit_xxs/flow/finetune",
        "mobilevit_xxs/flow/finetune/pre",
        *[
            f"{v}/{r}/{l}/{p}"
            for v in ("mobilevit_xxs", "mobilevit_xs")
            for r in ("flow", "onset_apex", "apex")
            for l in ("stage3", "stage4", "final")
            for p in ("grid2", "avg")
        ],
        APEX_TEACHER,
        "fer_mini_xception/apex/logits/avg",
        f"flow_grid14/flow + {APEX_TEACHER}",
        f"flow_hoof4/flow + {APEX_TEACHER}",
    ],
}
PARAM_GRIDS = {
    "small": SMALL_PARAM_GRID,
    "motion": SMALL_PARAM_GRID,
    "raw": SMALL_PARAM_GRID,
    "network": SMALL_PARAM_GRID,
    "cnn": SMALL_PARAM_GRID,
    "motion_cnn": SMALL_PARAM_GRID,
    "stack": SMALL_PARAM_GRID,
    "stack_cnn": SMALL_PARAM_GRID,
    "stack_apex": SMALL_PARAM_GRID,
    "full": FULL_PARAM_GRID,
}
STACK_GRIDS = ("stack", "stack_cnn", "stack_apex")


def parse_feature_set(
    text: str,
    settings: LosoSettings,
    weights: Optional[str] = None,
    weights_meta: Optional[dict] = None,
):
    """One grid entry (see FEATURE_GRIDS) -> FeatureSetting or FusedSetting; `weights` (with
    their card `weights_meta`) go to the network candidates they were trained for."""

    parts = [p.strip() for p in text.split("+")]
    if len(parts) > 1:
        return FusedSetting(
            tuple(parse_feature_set(p, settings, weights, weights_meta) for p in parts)
        )
    fields = text.split("/")
    if fields[0] not in list_models():
        raise MicroferError(
            f"feature set {text!r}: unknown extractor {fields[0]!r}; available: {', '.join(list_models())}"
        )
    if model_family(fields[0]) == "smallcnn":
        if len(fields) != 2 or fields[1] != "flow":
            raise MicroferError(f"feature set {text!r}: a small CNN is written 'name/flow'")
        return CNNRecipe(variant=fields[0], representation="flow")
    if is_descriptor(fields[0]):
        if len(fields) != 2:
            raise MicroferError(
                f"feature set {text!r}: a descriptor is written 'name/representation'"
            )
        return FeatureSetting(
            variant=fields[0],
            representation=fields[1],
            layer="none",
            pool="none",
            input_size=28,
            seed=0,
            block_weights=None,
        )
    if len(fields) in (3, 4) and is_finetune_step(fields[2]):
        return recipe_from_name(text, fields, weights)
    return _network_setting(text, fields, settings, weights, weights_meta)


def _network_setting(
    text: str, fields: list[str], settings: LosoSettings, weights, weights_meta
) -> FeatureSetting:
    """A network entry "variant/representation/layer/pool" -> its FeatureSetting."""
    if len(fields) != 4:
        raise MicroferError(
            f"feature set {text!r}: a network is written 'variant/representation/layer/pool'"
        )
    variant, rep, layer, pool = fields
    meta = weights_meta or {}
    # weights pretrained on one variant and input representation mean nothing elsewhere:
    # those candidates keep the random initialisation (and say so in their name)
    fits = (
        bool(meta) and meta.get("variant") == variant and meta.get("representation") in (None, rep)
    )
    size = int(meta.get("input_size", settings.input_size)) if fits else settings.input_size
    return FeatureSetting(
        variant=variant,
        representation=rep,
        layer=layer,
        pool=pool,
        input_size=fixed_input_size(variant) or size,
        seed=settings.seed,
        block_weights=str(weights) if fits and weights else None,
    )


def feature_grid(settings: LosoSettings) -> list:
    """The feature sets (FeatureSetting / FusedSetting) of `settings.features`, else of the grid name."""
    if settings.grid not in FEATURE_GRIDS:
        raise MicroferError(
            f"unknown grid {settings.grid!r}; expected one of {', '.join(FEATURE_GRIDS)}"
        )
    spec = list(settings.features) or FEATURE_GRIDS[settings.grid]
    weights, meta = None, None
    if settings.block_weights:
        weights = resolve_weights(settings.block_weights)
        meta = read_block_meta(weights)
    parsed = [parse_feature_set(text, settings, weights, meta) for text in spec]
    # one candidate per name ("x/finetune/pre" without weights is "x/finetune")
    unique: dict[str, Any] = {}
    for fs in parsed:
        unique.setdefault(fs.name, fs)
    return list(unique.values())
