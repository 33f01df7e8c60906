"""Leave-one-subject-out evaluation: folds from a protocol, choices inside folds, pooled metrics.

Flow of `run_loso`:
1. the protocol's samples (its shipped manifest, or `manifest` -- e.g. a synthetic
   dataset's), each with class index `y` and subject `group` ("casme2/sub01");
2. samples without an ok entry in the prepare cache are listed with the reason and
   excluded (counts in the result), then the protocol builds folds on what is left;
3. features are extracted ONCE for all kept clips per feature setting (features do not
   depend on labels; pretrained weights saw macro-expression data only);
4. each fold (in parallel, joblib) selects feature set + SVM settings by inner CV on its
   training subjects only (`classify.select_and_fit`) and predicts its held-out subject;
   the majority baseline predicts the fold's most frequent TRAINING class;
5. metrics on predictions pooled over all folds, per dataset, per subject;
6. with `permutations` > 0, the chance level: steps 4-5 rerun on permuted labels
   (`microfer.learn.permutation`), null UF1/UAR and the p-value of the real score.
Every fold is checked: a subject in both train and test raises FoldLeakError.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from microfer.clip.cache import open_cache, prepare_settings_of  # noqa: F401  (open_cache: kept importable from here)
from microfer.datasets import read_manifest
from microfer.errors import MicroferError
from microfer.io import file_sha256, frame_sha256
from microfer.learn.classify import (
    FULL_PARAM_GRID,
    SMALL_PARAM_GRID,
    make_svm,
)
from microfer.learn.features import FeatureSetting, FusedSetting, extract_features
from microfer.learn.finetune import CNNRecipe, learned_features
from microfer.learn.finetune_vit import recipe_from_name
from microfer.learn.folds import (  # noqa: F401  (importable from here too)
    FoldLeakError,
    FoldResult,
    SimpleFold,
    check_folds,
    evaluate_folds,
    leave_one_group_out,
    pooled_predictions,
    run_fold,
)
from microfer.learn.permutation import check_request, permutation_test, pooled_scores
from microfer.learn.protocols import load_protocol
from microfer.metrics import bootstrap_interval, summarize
from microfer.models import is_descriptor, list_models, model_family, resolve_weights
from microfer.models.weights import read_block_meta
from microfer.parallel import jobs_for, scheduler_context

# Candidates are written as the names the report shows: "descriptor/representation",
# "variant/representation/layer/pool" for a MobileViT (pretrained where the weights fit
# its variant and representation, random init elsewhere), "A + B" for a fusion.
# flow_raw is a candidate too: where the flow's zero is reliable and the head still (clean
# synthetic clips) the plain flow can win, and the inner folds see that
MOTION_DESCRIPTORS = ["flow_raw/flow", "flow_grid14/flow", "flow_grid7/flow", "flow_hoof4/flow"]
FEATURE_GRIDS: dict[str, list[str]] = {
    # The default: training-free motion descriptors (the strongest features on the real
    # composite inputs) and the macro-pretrained network on the apex face. Their fusion is
    # in "full" only: on the real inputs it scored below the descriptor alone (docs/results.md).
    "small": [*MOTION_DESCRIPTORS, "mobilevit_xxs/apex/final/avg"],
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
    "full": [
        *MOTION_DESCRIPTORS,
        "ststnet14/flow",
        # MobileViT fine-tuned inside every (inner and outer) fold: hours on a CPU
        "mobilevit_xxs/flow/finetune",
        "mobilevit_xxs/flow/finetune/pre",
        *[
            f"{v}/{r}/{l}/{p}"
            for v in ("mobilevit_xxs", "mobilevit_xs")
            for r in ("flow", "onset_apex", "apex")
            for l in ("stage3", "stage4", "final")
            for p in ("grid2", "avg")
        ],
        "flow_grid14/flow + mobilevit_xxs/apex/final/avg",
        "flow_hoof4/flow + mobilevit_xxs/apex/final/avg",
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
    "full": FULL_PARAM_GRID,
}
STACK_GRIDS = ("stack", "stack_cnn")
MERGE_KEYS = ["dataset", "subject", "clip"]
SHORT = ("n", "uf1", "uar", "accuracy")  # what the halves report
# subject resamples for the 95% intervals (seed 0: a fixed function of the predictions)
BOOTSTRAP_N = 1000


def subject_halves(y, pred, groups, classes) -> dict[str, Any]:
    """Metrics on two fixed halves of the subjects: sorted names, alternating A, B, A, ...

    A gain counts only if it holds on both halves (not a lucky subset); the split depends
    on nothing but the subject names, so every run and candidate uses the same halves.
    """
    names = sorted(set(np.asarray(groups).astype(str).tolist()))
    out: dict[str, Any] = {"rule": "subjects sorted by name; even positions A, odd B"}
    for half, members in (("A", names[0::2]), ("B", names[1::2])):
        m = np.isin(groups, members)
        out[half] = {
            **{k: v for k, v in summarize(y[m], pred[m], classes).items() if k in SHORT},
            "subjects": members,
        }
    return out


def compute_metrics(
    y: np.ndarray,
    results: Sequence[FoldResult],
    classes: Sequence[str],
    datasets: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Pooled metrics (model and majority baseline), per dataset and per subject."""
    y = np.asarray(y, dtype=np.int64)
    pred, maj, fold_of = pooled_predictions(y.size, results)
    tested = fold_of >= 0
    groups = np.array([results[i].group if i >= 0 else "" for i in fold_of])
    out: dict[str, Any] = {
        "pooled": summarize(y[tested], pred[tested], classes),
        # subject-level 95% interval (each fold tests one subject: its group)
        "bootstrap": bootstrap_interval(
            y[tested], pred[tested], groups[tested], len(classes), n_boot=BOOTSTRAP_N
        )
        if np.unique(groups[tested]).size >= 2
        else None,
        "majority": summarize(y[tested], maj[tested], classes),
        "halves": subject_halves(y[tested], pred[tested], groups[tested], classes),
        "n_tested": int(tested.sum()),
        "n_folds": len(results),
    }
    if datasets is not None:
        datasets = np.asarray(datasets).astype(str)
        out["per_dataset"] = {
            ds: {
                "model": summarize(
                    y[tested & (datasets == ds)], pred[tested & (datasets == ds)], classes
                ),
                "majority": summarize(
                    y[tested & (datasets == ds)], maj[tested & (datasets == ds)], classes
                ),
            }
            for ds in sorted(set(datasets[tested].tolist()))
        }
    rows = []
    for r in results:
        idx = np.asarray(r.test_idx, dtype=np.int64)
        rows.append(
            {
                "group": r.group,
                "n": int(idx.size),
                "correct": int((pred[idx] == y[idx]).sum()),
                "accuracy": round(float((pred[idx] == y[idx]).mean()), 6),
                "majority_accuracy": round(float((maj[idx] == y[idx]).mean()), 6),
                "feature_set": r.feature_name,
                "params": r.params,
                "inner_score": r.inner_score,
            }
        )
    out["per_subject"] = rows
    return out


# ---------------------------------------------------------------------------- the whole run
@dataclass
class LosoSettings:
    grid: str = "small"
    seed: int = 0
    n_jobs: int = 1
    inner_splits: int = 5
    scoring: str = "uf1"
    batch_size: int = 32
    num_threads: Optional[int] = None
    input_size: int = 128
    # "default" = the shipped macro-pretrained weights, None = random init, else a path
    block_weights: Optional[str] = "default"
    feature_dir: Optional[str] = None
    device: str = "cpu"
    features: tuple[
        str, ...
    ] = ()  # explicit feature sets (FEATURE_GRIDS syntax) instead of the grid's
    permutations: int = 0  # label permutations for the chance level (0 = none)
    permutation_seed: int = 0
    # where folds and permutations run: None = here (n_jobs processes), "local" = a dask
    # LocalCluster, else a dask scheduler address (microfer.parallel). Not a setting of the
    # result: results.json is the same wherever it ran, so it is left out of it.
    scheduler: Optional[str] = None


RUN_ONLY_SETTINGS = ("scheduler",)  # how a run was executed, not what it computed


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
    if len(fields) in (3, 4) and fields[2] == "finetune":
        return recipe_from_name(text, fields, weights)
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
    return FeatureSetting(
        variant=variant,
        representation=rep,
        layer=layer,
        pool=pool,
        input_size=int(meta.get("input_size", settings.input_size))
        if fits
        else settings.input_size,
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


def load_samples(protocol, manifest=None) -> tuple[Any, pd.DataFrame]:
    """(protocol object, its samples) for a protocol name or object and an optional manifest.

    `manifest` (a CSV path or a DataFrame) replaces the protocol's shipped manifest, e.g.
    to run a protocol on a synthetic dataset.
    """
    if isinstance(protocol, (str, Path)):
        protocol = load_protocol(protocol, check_manifest=manifest is None)
    if isinstance(manifest, (list, tuple)):
        paths = [Path(m) for m in manifest]
        for m in paths:
            if not m.is_file():
                raise MicroferError(f"{m}: manifest CSV not found")
        if len(paths) == 1:
            manifest = paths[0]
        else:  # several datasets prepared separately, evaluated together (e.g. the composite)
            manifest = pd.concat([read_manifest(m) for m in paths], ignore_index=True)
    elif manifest is not None and not isinstance(manifest, pd.DataFrame):
        manifest = Path(manifest)
        if not manifest.is_file():
            raise MicroferError(f"{manifest}: manifest CSV not found")
    samples = protocol.samples(manifest)
    missing = [c for c in (*MERGE_KEYS, "y", "group") if c not in samples.columns]
    if missing:
        raise MicroferError(f"protocol {protocol.name}: samples lack column(s) {missing}")
    if samples.empty:
        raise MicroferError(
            f"protocol {protocol.name}: no sample of the manifest maps to one of its classes "
            f"{list(protocol.classes)}"
        )
    return protocol, samples.reset_index(drop=True)


def match_cache(samples: pd.DataFrame, index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept samples with their cache `key`, excluded samples with a `reason`)."""
    index = index.copy()
    for c in MERGE_KEYS:
        index[c] = index[c].astype(str)
    left = samples.copy()
    for c in MERGE_KEYS:
        left[c] = left[c].astype(str)
    ok = index[index["status"].astype(str) == "ok"].drop_duplicates(MERGE_KEYS, keep="last")
    failed = index[index["status"].astype(str) != "ok"].drop_duplicates(MERGE_KEYS, keep="last")
    cached = [c for c in ("onset", "apex", "offset", "apex_source") if c in ok.columns]
    merged = left.drop(columns=[c for c in ("key",) if c in left.columns]).merge(
        ok[MERGE_KEYS + ["key"] + cached].rename(columns={c: f"cached_{c}" for c in cached}),
        on=MERGE_KEYS,
        how="left",
    )
    check_cache_agrees(merged)
    merged = merged.drop(columns=[f"cached_{c}" for c in cached])
    has = merged["key"].notna()
    kept = merged[has].reset_index(drop=True)
    excluded = merged[~has][MERGE_KEYS + ["group"]].merge(
        failed[MERGE_KEYS + [c for c in ("reason",) if c in failed.columns]],
        on=MERGE_KEYS,
        how="left",
    )
    if "reason" not in excluded.columns:
        excluded["reason"] = ""
    excluded["reason"] = excluded["reason"].fillna("").astype(str)
    excluded.loc[excluded["reason"] == "", "reason"] = "not in the cache (not prepared)"
    return kept, excluded.reset_index(drop=True)


def check_cache_agrees(merged: pd.DataFrame) -> None:
    """MicroferError when cache entries were prepared from other frames than the manifest names
    (a corrected coding file, a manifest of another version): the numbers would be silently
    those of the old frames. Entries read from derived inputs, and old caches that did not
    record onset/offset, are not compared."""
    if "cached_onset" not in merged.columns or "onset" not in merged.columns:
        return
    framed = merged["cached_apex_source"].astype(str).isin(["annotated", "spotted"])
    rows = merged[framed & merged["cached_onset"].astype(str).str.fullmatch(r"-?\d+")]
    bad = []
    for r in rows.to_dict("records"):
        diffs = [
            f"{c} {r[c]} in the manifest, {r[f'cached_{c}']} in the cache"
            for c in ("onset", "offset")
            if str(r[c]) not in ("", "nan") and int(float(r[c])) != int(float(r[f"cached_{c}"]))
        ]
        annotated = r["cached_apex_source"] == "annotated" and str(r["apex"]) not in ("", "nan")
        if annotated and int(float(r["apex"])) != int(float(r["cached_apex"])):
            diffs.append(f"apex {r['apex']} in the manifest, {r['cached_apex']} in the cache")
        if diffs:
            bad.append(f"{r['key']} ({'; '.join(diffs)})")
    if bad:
        raise MicroferError(
            f"the prepare cache disagrees with the manifest for {len(bad)} clip(s): "
            f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; run `microfer prepare` with "
            "this manifest on the same cache to prepare them again"
        )


@dataclass
class LosoResult:
    protocol: str
    classes: list[str]
    samples: pd.DataFrame  # kept samples, row i <-> y[i]
    excluded: pd.DataFrame  # dataset, subject, clip, group, reason
    y: np.ndarray
    pred: np.ndarray
    majority_pred: np.ndarray
    folds: list[FoldResult]
    metrics: dict[str, Any]
    settings: dict[str, Any]
    feature_sets: list[dict[str, Any]]
    samples_sha256: str
    manifest_sha256: Optional[str] = None
    timings: dict[str, float] = field(default_factory=dict)
    permutation: Optional[Any] = (
        None  # permutation.PermutationResult when settings.permutations > 0
    )


@dataclass
class ProtocolFeatures:
    """A protocol's samples matched to a prepare cache, with every grid feature set extracted.

    The step `loso` and `train` share: what comes after it (folds, or one fit on all
    subjects) is the only difference between evaluating and training.
    """

    protocol: Any
    samples: pd.DataFrame  # kept samples, row i <-> y[i], with cache `key`
    excluded: pd.DataFrame
    n_candidates: int  # samples of the protocol before matching the cache
    y: np.ndarray
    groups: np.ndarray
    classes: list[str]
    feature_settings: list[FeatureSetting]
    feature_sets: dict[str, np.ndarray]
    prepare_settings: dict[str, Any]
    load_s: float = 0.0
    features_s: float = 0.0


def gather_features(
    protocol, cache, manifest=None, settings: Optional[LosoSettings] = None, progress: bool = True
) -> ProtocolFeatures:
    settings = settings or LosoSettings()
    t0 = time.perf_counter()
    proto, samples = load_samples(protocol, manifest)
    source = open_cache(cache)
    kept, excluded = match_cache(samples, source.index())
    if kept.empty:
        raise MicroferError(
            f"protocol {proto.name}: none of its {len(samples)} samples is in the cache "
            f"(prepare them first)"
        )
    found = sorted({int(v) for v in kept["y"]})
    if len(found) < 2:
        names = [str(proto.classes[i]) if 0 <= i < len(proto.classes) else str(i) for i in found]
        raise MicroferError(
            f"protocol {proto.name}: the {len(kept)} sample(s) in the cache hold {len(found)} class "
            f"({', '.join(names)}) of {list(proto.classes)}; a classifier needs at least 2 "
            f"({len(excluded)} sample(s) excluded)"
        )
    keys = kept["key"].astype(str).tolist()
    feature_dir = settings.feature_dir
    if feature_dir is None and getattr(source, "dir", None) is not None:
        # beside the prepared clips they were computed from (same prepare settings)
        feature_dir = str(Path(source.dir) / "features")
    t1 = time.perf_counter()
    prepare_settings = prepare_settings_of(source)
    settings_file = Path(getattr(source, "dir", "")) / "settings.json"
    fsets = feature_grid(settings)
    offered = prepare_settings.get("representations")
    if offered is not None:
        # entries of derived inputs cannot give every representation (no onset face): use what they offer
        offered = [str(r) for r in offered]
        wanted = sorted({r for fs in fsets for r in fs.representations})
        fsets = [fs for fs in fsets if set(fs.representations) <= set(offered)]
        if not fsets:
            raise MicroferError(
                f"{settings_file}: this cache offers representations {', '.join(offered)}; grid "
                f"{settings.grid!r} asks only for {', '.join(wanted)}"
            )

    def extract(fs):
        return extract_features(
            source,
            fs,
            keys=keys,
            feature_dir=Path(feature_dir) if feature_dir else None,
            batch_size=settings.batch_size,
            num_threads=settings.num_threads,
            device=settings.device,
            progress=progress,
        )

    feature_sets = {
        fs.name: learned_features(fs, extract, len(proto.classes), feature_dir)
        if getattr(fs, "is_learned", False)
        else extract(fs)
        for fs in fsets
    }
    return ProtocolFeatures(
        protocol=proto,
        samples=kept,
        excluded=excluded,
        n_candidates=len(samples),
        y=kept["y"].to_numpy(dtype=np.int64),
        groups=kept["group"].astype(str).to_numpy(),
        classes=[str(c) for c in proto.classes],
        feature_settings=fsets,
        feature_sets=feature_sets,
        prepare_settings=prepare_settings,
        load_s=t1 - t0,
        features_s=time.perf_counter() - t1,
    )


def run_loso(
    protocol,
    cache,
    manifest=None,
    settings: Optional[LosoSettings] = None,
    progress: bool = True,
    make_estimator: Callable[..., Any] = make_svm,
) -> LosoResult:
    """LOSO of `protocol` on the clips of a prepare `cache` (see the module docstring)."""
    settings = settings or LosoSettings()
    if settings.permutations:
        check_request(
            settings.permutations, settings.permutation_seed
        )  # before the long work, not after

    # connected before the features are extracted (here), so a wrong address fails at once
    with scheduler_context(settings.scheduler):
        data = gather_features(protocol, cache, manifest, settings, progress)
        folds = data.protocol.folds(data.samples)
        check_folds(folds, data.groups)
        return _evaluate(
            settings,
            data,
            folds,
            progress,
            make_estimator,
            manifest,
            jobs_for(settings.scheduler, settings.n_jobs),
        )


def _evaluate(
    settings: LosoSettings,
    data: ProtocolFeatures,
    folds,
    progress: bool,
    make_estimator: Callable[..., Any],
    manifest,
    n_jobs: int,
) -> LosoResult:
    """run_loso after the features: folds, metrics, permutations (on the scheduler, if any)."""
    proto, kept, excluded, samples_n = data.protocol, data.samples, data.excluded, data.n_candidates
    y, groups, classes, fsets, feature_sets = (
        data.y,
        data.groups,
        data.classes,
        data.feature_settings,
        data.feature_sets,
    )
    t2 = time.perf_counter()
    results = evaluate_folds(
        feature_sets,
        y,
        groups,
        folds,
        param_grid=PARAM_GRIDS[settings.grid],
        inner_splits=settings.inner_splits,
        n_jobs=n_jobs,
        seed=settings.seed,
        n_classes=len(classes),
        scoring=settings.scoring,
        make_estimator=make_estimator,
        progress=progress,
        stack=settings.grid in STACK_GRIDS,
    )
    t3 = time.perf_counter()
    datasets = kept["dataset"].astype(str)
    per_dataset = bool(getattr(proto, "per_dataset", False)) or datasets.nunique() > 1
    metrics = compute_metrics(y, results, classes, datasets.tolist() if per_dataset else None)
    metrics["protocol_metrics"] = list(getattr(proto, "metrics", ("uf1", "uar", "accuracy")))
    metrics["excluded"] = {
        "count": int(len(excluded)),
        "of": int(samples_n),
        "by_reason": excluded["reason"].value_counts().sort_index().to_dict(),
    }
    permutation = None
    if settings.permutations:
        # Pooled datasets differ in class frequencies and their features tell them apart
        # (camera, frame rate, lighting), so the dataset alone predicts the label somewhat.
        # Permuting within each dataset keeps that in the null: p then measures what the
        # features say about the emotion beyond which dataset a clip came from.
        strata = datasets.to_numpy() if datasets.nunique() > 1 else None
        permutation = permutation_test(
            feature_sets,
            y,
            groups,
            folds,
            param_grid=PARAM_GRIDS[settings.grid],
            inner_splits=settings.inner_splits,
            n_classes=len(classes),
            scoring=settings.scoring,
            make_estimator=make_estimator,
            n_permutations=settings.permutations,
            seed=settings.permutation_seed,
            strata=strata,
            n_jobs=n_jobs,
            progress=progress,
            real=pooled_scores(y, results, len(classes)),
            stack=settings.grid in STACK_GRIDS,
        )
        metrics["permutation"] = permutation.as_dict()
    t4 = time.perf_counter()
    pred, maj, _ = pooled_predictions(y.size, results)

    manifest_sha = None
    if (
        manifest is None
        and getattr(proto, "manifest_path", None) is not None
        and Path(proto.manifest_path).is_file()
    ):
        manifest_sha = file_sha256(proto.manifest_path)  # the protocol's shipped manifest
    elif isinstance(manifest, (list, tuple)):
        manifest_sha = hashlib.sha256(
            "".join(file_sha256(m) for m in manifest).encode()
        ).hexdigest()
    elif manifest is not None and not isinstance(manifest, pd.DataFrame):
        manifest_sha = file_sha256(manifest)
    return LosoResult(
        protocol=str(proto.name),
        classes=classes,
        samples=kept,
        excluded=excluded,
        y=y,
        pred=pred,
        majority_pred=maj,
        folds=results,
        metrics=metrics,
        settings={
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(settings).items()
            if k not in RUN_ONLY_SETTINGS
        },
        feature_sets=[{**asdict(fs), "name": fs.name, "key": fs.key()} for fs in fsets],
        samples_sha256=frame_sha256(kept, [*MERGE_KEYS, "emotion", "label", "y", "group"]),
        manifest_sha256=manifest_sha,
        timings={
            "load_s": round(data.load_s, 3),
            "features_s": round(data.features_s, 3),
            "folds_s": round(t3 - t2, 3),
            **({"permutations_s": round(t4 - t3, 3)} if permutation is not None else {}),
            "total_s": round(data.load_s + data.features_s + t4 - t2, 3),
        },
        permutation=permutation,
    )
