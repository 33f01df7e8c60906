"""Cross-validation folds and what happens inside one: the outer loop of LOSO.

`evaluate_folds` runs every fold (choose feature set + SVM settings on the training
subjects, predict the held-out one; with `calibrate`, also a calibrator fitted on the
training subjects' out-of-fold scores and the held-out clips' probabilities) and checks
that no subject is on both sides. The
LOSO runner (`microfer.learn.evaluate`) and the permutation test both call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from microfer.errors import MicroferError
from microfer.learn.calibrate import Calibrator, fit_calibrator
from microfer.learn.classify import (
    LearnedFeatures,
    class_scores,
    expand_grid,
    inner_splits_for,
    make_svm,
    oof_scores,
    select_and_fit,
)
from microfer.learn.stack import stack_select_and_fit
from microfer.metrics import majority_class


class FoldLeakError(MicroferError):
    """A fold would train on a subject it tests on (a bug in fold generation)."""


@dataclass(frozen=True)
class SimpleFold:
    """Same fields as `microfer.learn.protocols.Fold`: one held-out group."""

    group: str
    train_idx: np.ndarray
    test_idx: np.ndarray


def leave_one_group_out(groups: Sequence[str]) -> list[SimpleFold]:
    """One fold per group, in sorted group order (for callers without a protocol)."""
    groups = np.asarray(groups)
    return [
        SimpleFold(str(g), np.flatnonzero(groups != g), np.flatnonzero(groups == g))
        for g in sorted(set(groups.tolist()))
    ]


def check_folds(folds: Sequence[Any], groups: np.ndarray) -> None:
    """Raise FoldLeakError when any fold shares a group between train and test."""
    groups = np.asarray(groups)
    for fold in folds:
        train, test = np.asarray(fold.train_idx), np.asarray(fold.test_idx)
        if test.size == 0:
            raise FoldLeakError(f"fold {fold.group}: empty test part")
        if np.intersect1d(train, test).size:
            raise FoldLeakError(f"fold {fold.group}: samples in both train and test")
        shared = set(groups[train].tolist()) & set(groups[test].tolist())
        if shared:
            raise FoldLeakError(
                f"fold {fold.group}: subject(s) {sorted(shared)} in both train and test"
            )


@dataclass
class FoldResult:
    group: str
    test_idx: list[int]
    n_train: int
    feature_name: str
    params: dict[str, Any]
    inner_score: Optional[float]  # None: a single candidate, nothing was chosen by inner CV
    y_pred: list[int]
    majority: int
    # calibrated class probabilities of each test clip (rows sum to 1), from a calibrator
    # fitted on this fold's training subjects only (`learn.calibrate`); None: not calibrated
    probabilities: Optional[list[list[float]]] = None
    n_calibration: int = 0  # training rows the calibrator was fitted on


def run_fold(
    feature_sets: Mapping[str, np.ndarray],
    y: np.ndarray,
    groups: np.ndarray,
    fold: Any,
    param_grid,
    inner_splits: int,
    n_classes: int,
    seed: int,
    scoring: str = "uf1",
    make_estimator: Callable[..., Any] = make_svm,
    stack: bool = False,
    calibrate: bool = False,
) -> FoldResult:
    check_folds([fold], groups)
    train, test = np.asarray(fold.train_idx), np.asarray(fold.test_idx)
    # stack: the members' scores combined by weights learned on inner folds (learn.stack)
    select = stack_select_and_fit if stack else select_and_fit
    choice = select(
        feature_sets,
        y,
        groups,
        train,
        inner_splits=inner_splits,
        param_grid=param_grid,
        seed=seed,
        scoring=scoring,
        n_classes=n_classes,
        make_estimator=make_estimator,
    )
    pred = choice.predict(feature_sets, test)
    prob, n_cal = None, 0
    if calibrate and can_calibrate(choice):
        cal = fold_calibrator(
            feature_sets, y, groups, train, choice, inner_splits, n_classes, make_estimator
        )
        prob = choice_probabilities(choice, cal, feature_sets, test, n_classes)
        prob, n_cal = [[round(float(p), 6) for p in row] for row in prob], cal.n_rows
    return FoldResult(
        group=str(fold.group),
        test_idx=test.tolist(),
        n_train=int(train.size),
        feature_name=choice.feature_name,
        params=choice.params,
        inner_score=None if np.isnan(choice.inner_score) else round(float(choice.inner_score), 6),
        y_pred=[int(p) for p in pred],
        majority=majority_class(y[train], n_classes),
        probabilities=prob,
        n_calibration=n_cal,
    )


def can_calibrate(choice) -> bool:
    """Whether a fold's choice gets a calibrator: not a stack (no estimator to refit on the
    inner folds), nor a learned candidate that was alone (no inner CV ran, so calibrating
    would train the network once per inner fold for this alone)."""
    return hasattr(choice.model, "fit") and not np.isnan(choice.inner_score)


def fold_calibrator(
    feature_sets: Mapping[str, Any],
    y: np.ndarray,
    groups: np.ndarray,
    train_idx: np.ndarray,
    choice,
    inner_splits: int,
    n_classes: int,
    make_estimator: Callable[..., Any] = make_svm,
) -> Calibrator:
    """The calibrator of `choice` (a `classify.FittedChoice`), from rows `train_idx` only:
    out-of-fold scores of the chosen candidate over inner subject splits of those rows."""
    train_idx = np.asarray(train_idx)
    X = feature_sets[choice.feature_name]
    est = X.make_estimator if isinstance(X, LearnedFeatures) else make_estimator
    Xt, y_tr = np.asarray(X)[train_idx], np.asarray(y)[train_idx]
    splits = inner_splits_for(np.asarray(groups)[train_idx], inner_splits)
    scores = oof_scores(Xt, y_tr, splits, choice.params, n_classes, est)
    return fit_calibrator(scores, y_tr, n_classes, rows=train_idx)


def choice_probabilities(choice, calibrator: Calibrator, feature_sets, idx, n_classes: int):
    """(len(idx), K) calibrated probabilities of the fitted choice on rows `idx`."""
    X = np.asarray(feature_sets[choice.feature_name])[np.asarray(idx)]
    return calibrator.probabilities(class_scores(choice.model, X, n_classes))


# Over ~60 lines by its signature and docstring; the body is short.
def evaluate_folds(
    feature_sets: Mapping[str, np.ndarray],
    y,
    groups,
    folds: Sequence[Any],
    param_grid=None,
    inner_splits: int = 5,
    n_jobs: int = 1,
    seed: int = 0,
    n_classes: Optional[int] = None,
    scoring: str = "uf1",
    make_estimator: Callable[..., Any] = make_svm,
    progress: bool = False,
    stack: bool = False,
    calibrate: bool = False,
) -> list[FoldResult]:
    """Run every fold (joblib, n_jobs); results in fold order, independent of n_jobs.
    `calibrate`: each fold also gives calibrated probabilities of its test clips."""
    from joblib import Parallel, delayed

    y = np.asarray(y, dtype=np.int64)
    groups = np.asarray(groups).astype(str)
    n = y.size
    for name, X in feature_sets.items():
        if np.asarray(X).shape[0] != n:
            raise MicroferError(
                f"feature set {name} has {np.asarray(X).shape[0]} rows for {n} samples"
            )
    folds = list(folds)
    check_folds(folds, groups)
    for f in folds:
        n_train_groups = np.unique(groups[np.asarray(f.train_idx)]).size
        if n_train_groups < 2:
            raise MicroferError(
                f"fold {f.group}: its training part holds {n_train_groups} subject(s); choices "
                f"inside the fold need at least 2 (LOSO needs at least 3 subjects)"
            )
    k = int(n_classes if n_classes is not None else y.max() + 1)
    param_grid = expand_grid(param_grid)
    tasks = (
        delayed(run_fold)(
            feature_sets,
            y,
            groups,
            f,
            param_grid,
            inner_splits,
            k,
            seed,
            scoring,
            make_estimator,
            stack,
            calibrate,
        )
        for f in folds
    )
    # results come back in fold order whatever n_jobs is, so the numbers do not depend on it
    results = Parallel(n_jobs=n_jobs, return_as="generator")(tasks)
    if progress:
        from tqdm import tqdm

        results = tqdm(
            results, total=len(folds), desc="LOSO folds", unit="fold", leave=False, disable=None
        )
    return list(results)


def pooled_predictions(
    n: int, results: Sequence[FoldResult]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predictions, majority predictions, fold of each sample) over all folds; -1 = never tested."""
    pred = np.full(n, -1, np.int64)
    maj = np.full(n, -1, np.int64)
    fold_of = np.full(n, -1, np.int64)
    for i, r in enumerate(results):
        idx = np.asarray(r.test_idx, dtype=np.int64)
        if (fold_of[idx] >= 0).any():
            raise FoldLeakError(f"fold {r.group}: a sample is tested by more than one fold")
        pred[idx] = r.y_pred
        maj[idx] = r.majority
        fold_of[idx] = i
    return pred, maj, fold_of
