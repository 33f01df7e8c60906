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
5. metrics on predictions pooled over all folds, per dataset, per subject; the folds'
   calibrated probabilities (each fold's calibrator fitted on its training subjects'
   out-of-fold scores: `microfer.learn.calibrate`) scored by Brier score and ECE;
6. with `permutations` > 0, the chance level: steps 4-5 rerun on permuted labels
   (`microfer.learn.permutation`), null UF1/UAR and the p-value of the real score.
Every fold is checked: a subject in both train and test raises FoldLeakError.

Steps 1-2 live in `protocol_samples`, the grids and their parsing in `grids`, the settings
in `loso_settings`; their names stay importable from here.
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
from microfer.errors import MicroferError
from microfer.io import file_sha256, frame_sha256
from microfer.learn.calibrate import METHOD as CALIBRATION_METHOD
from microfer.learn.classify import make_svm
from microfer.learn.features import FeatureSetting, extract_features
from microfer.learn.finetune import learned_features
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
from microfer.learn.grids import (  # noqa: F401  (importable from here too)
    FEATURE_GRIDS,
    MOTION_DESCRIPTORS,
    PARAM_GRIDS,
    STACK_GRIDS,
    feature_grid,
    parse_feature_set,
)
from microfer.learn.loso_settings import RUN_ONLY_SETTINGS, LosoSettings
from microfer.learn.permutation import check_request, permutation_test, pooled_scores
from microfer.learn.protocol_samples import (  # noqa: F401  (importable from here too)
    MERGE_KEYS,
    check_cache_agrees,
    load_samples,
    match_cache,
)
from microfer.metrics import bootstrap_interval, calibration, summarize
from microfer.parallel import jobs_for, scheduler_context

SHORT = ("n", "uf1", "uar", "accuracy")  # what the halves report
# subject resamples for the 95% intervals (seed 0: a fixed function of the predictions)
BOOTSTRAP_N = 1000


def halves_of(groups) -> tuple[tuple[str, list[str]], tuple[str, list[str]]]:
    """(("A", subjects), ("B", subjects)): the names sorted, even positions A, odd B."""
    names = sorted(set(np.asarray(groups).astype(str).tolist()))
    return ("A", names[0::2]), ("B", names[1::2])


def subject_halves(y, pred, groups, classes) -> dict[str, Any]:
    """Metrics on two fixed halves of the subjects: sorted names, alternating A, B, A, ...

    A gain counts only if it holds on both halves (not a lucky subset); the split depends
    on nothing but the subject names, so every run and candidate uses the same halves.
    """
    out: dict[str, Any] = {"rule": "subjects sorted by name; even positions A, odd B"}
    for half, members in halves_of(groups):
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
    calibrated = calibration_metrics(y, pred, results, len(classes))
    if calibrated is not None:
        out["calibration"] = calibrated
    return out


def calibration_metrics(y, pred, results: Sequence[FoldResult], n_classes: int):
    """Brier score, ECE and reliability bins of the folds' calibrated probabilities, pooled
    (None when no fold has them), with the subject halves and how often the probabilities'
    argmax agrees with the predicted label (which stays the SVM's)."""
    done = [r for r in results if r.probabilities is not None]
    if not done:
        return None
    idx = np.concatenate([np.asarray(r.test_idx, np.int64) for r in done])
    prob = np.concatenate([np.asarray(r.probabilities, np.float64) for r in done])
    groups = np.concatenate([[r.group] * len(r.test_idx) for r in done])
    halves = {}
    # the halves of every tested subject, as the metrics' halves, calibrated or not
    for half, members in halves_of([r.group for r in results]):
        m = np.isin(groups, members)
        if m.any():
            c = calibration(prob[m], y[idx][m])
            halves[half] = {"n": int(m.sum()), "brier": c["brier"], "ece": c["ece"]}
    return {
        "method": CALIBRATION_METHOD,
        "n": int(idx.size),
        "folds_calibrated": len(done),
        "folds_not_calibrated": [r.group for r in results if r.probabilities is None],
        **calibration(prob, y[idx]),
        "argmax_agrees_with_label": round(float((prob.argmax(1) == pred[idx]).mean()), 6),
        "halves": halves,
    }


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
    # permutation.PermutationResult when settings.permutations > 0
    permutation: Optional[Any] = None


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
    """Steps 1-3 of the module docstring: the kept samples and their features (see
    ProtocolFeatures); MicroferError when the cache cannot give a classifier two classes."""
    settings = settings or LosoSettings()
    t0 = time.perf_counter()
    proto, samples = load_samples(protocol, manifest)
    source = open_cache(cache)
    kept, excluded = match_cache(samples, source.index())
    _check_kept(proto, samples, kept, excluded)
    keys = kept["key"].astype(str).tolist()
    feature_dir = settings.feature_dir
    if feature_dir is None and getattr(source, "dir", None) is not None:
        # beside the prepared clips they were computed from (same prepare settings)
        feature_dir = str(Path(source.dir) / "features")
    t1 = time.perf_counter()
    prepare_settings = prepare_settings_of(source)
    fsets = _offered_feature_sets(feature_grid(settings), prepare_settings, source, settings.grid)

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


def _check_kept(proto, samples: pd.DataFrame, kept: pd.DataFrame, excluded: pd.DataFrame) -> None:
    """MicroferError unless the cache holds samples of at least 2 of the protocol's classes."""
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


def _offered_feature_sets(fsets: list, prepare_settings: dict, source, grid: str) -> list:
    """The feature sets whose representations the cache offers (all, where it does not say)."""
    offered = prepare_settings.get("representations")
    if offered is None:
        return fsets
    # entries of derived inputs cannot give every representation (no onset face): use what they offer
    offered = [str(r) for r in offered]
    wanted = sorted({r for fs in fsets for r in fs.representations})
    fsets = [fs for fs in fsets if set(fs.representations) <= set(offered)]
    if not fsets:
        settings_file = Path(getattr(source, "dir", "")) / "settings.json"
        raise MicroferError(
            f"{settings_file}: this cache offers representations {', '.join(offered)}; grid "
            f"{grid!r} asks only for {', '.join(wanted)}"
        )
    return fsets


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
    if settings.permutations:  # before the long work, not after
        check_request(settings.permutations, settings.permutation_seed)

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


# ~60 lines: the steps of a run after the features, in order, with their timings.
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
    # the permutations rerun this very search (the chance level of the procedure, not of one model)
    search = dict(
        param_grid=PARAM_GRIDS[settings.grid],
        inner_splits=settings.inner_splits,
        n_classes=len(data.classes),
        scoring=settings.scoring,
        make_estimator=make_estimator,
        n_jobs=n_jobs,
        progress=progress,
        stack=settings.grid in STACK_GRIDS,
    )
    t2 = time.perf_counter()
    # not in `search`: the permutation null needs labels only, not probabilities
    results = evaluate_folds(
        data.feature_sets, data.y, data.groups, folds, seed=settings.seed, calibrate=True, **search
    )
    t3 = time.perf_counter()
    metrics = _loso_metrics(data, results)
    permutation = None
    if settings.permutations:
        permutation = _permutation_test(settings, data, folds, results, search)
        metrics["permutation"] = permutation.as_dict()
    t4 = time.perf_counter()
    pred, maj, _ = pooled_predictions(data.y.size, results)
    return LosoResult(
        protocol=str(data.protocol.name),
        classes=data.classes,
        samples=data.samples,
        excluded=data.excluded,
        y=data.y,
        pred=pred,
        majority_pred=maj,
        folds=results,
        metrics=metrics,
        settings={
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(settings).items()
            if k not in RUN_ONLY_SETTINGS
        },
        feature_sets=[
            {**asdict(fs), "name": fs.name, "key": fs.key()} for fs in data.feature_settings
        ],
        samples_sha256=frame_sha256(data.samples, [*MERGE_KEYS, "emotion", "label", "y", "group"]),
        manifest_sha256=_manifest_sha256(data.protocol, manifest),
        timings={
            "load_s": round(data.load_s, 3),
            "features_s": round(data.features_s, 3),
            "folds_s": round(t3 - t2, 3),
            **({"permutations_s": round(t4 - t3, 3)} if permutation is not None else {}),
            "total_s": round(data.load_s + data.features_s + t4 - t2, 3),
        },
        permutation=permutation,
    )


def _loso_metrics(data: ProtocolFeatures, results: Sequence[FoldResult]) -> dict[str, Any]:
    """compute_metrics (per dataset where the protocol or the samples have several), with the
    protocol's headline metrics and the count of excluded samples by reason."""
    proto, excluded = data.protocol, data.excluded
    datasets = data.samples["dataset"].astype(str)
    per_dataset = bool(getattr(proto, "per_dataset", False)) or datasets.nunique() > 1
    metrics = compute_metrics(
        data.y, results, data.classes, datasets.tolist() if per_dataset else None
    )
    metrics["protocol_metrics"] = list(getattr(proto, "metrics", ("uf1", "uar", "accuracy")))
    metrics["excluded"] = {
        "count": int(len(excluded)),
        "of": int(data.n_candidates),
        "by_reason": excluded["reason"].value_counts().sort_index().to_dict(),
    }
    return metrics


def _permutation_test(settings: LosoSettings, data: ProtocolFeatures, folds, results, search):
    """The chance level: the folds' whole nested search rerun on permuted labels."""
    datasets = data.samples["dataset"].astype(str)
    # Pooled datasets differ in class frequencies and their features tell them apart
    # (camera, frame rate, lighting), so the dataset alone predicts the label somewhat.
    # Permuting within each dataset keeps that in the null: p then measures what the
    # features say about the emotion beyond which dataset a clip came from.
    strata = datasets.to_numpy() if datasets.nunique() > 1 else None
    return permutation_test(
        data.feature_sets,
        data.y,
        data.groups,
        folds,
        n_permutations=settings.permutations,
        seed=settings.permutation_seed,
        strata=strata,
        real=pooled_scores(data.y, results, len(data.classes)),
        **search,
    )


def _manifest_sha256(proto, manifest) -> Optional[str]:
    """The SHA-256 of the manifest the samples came from (None for an in-memory DataFrame)."""
    if (
        manifest is None
        and getattr(proto, "manifest_path", None) is not None
        and Path(proto.manifest_path).is_file()
    ):
        return file_sha256(proto.manifest_path)  # the protocol's shipped manifest
    if isinstance(manifest, (list, tuple)):
        return hashlib.sha256("".join(file_sha256(m) for m in manifest).encode()).hexdigest()
    if manifest is not None and not isinstance(manifest, pd.DataFrame):
        return file_sha256(manifest)
    return None
