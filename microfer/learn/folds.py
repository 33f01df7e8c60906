"""Cross-validation folds and what happens inside one: the outer loop of LOSO.

`evaluate_folds` runs every fold (choose feature set + SVM settings on the training
subjects, predict the held-out one) and checks that no subject is on both sides. The
LOSO runner (`microfer.learn.evaluate`) and the permutation test both call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from microfer.errors import MicroferError
from microfer.learn.classify import expand_grid, make_svm, select_and_fit
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
    return FoldResult(
        group=str(fold.group),
        test_idx=test.tolist(),
        n_train=int(train.size),
        feature_name=choice.feature_name,
        params=choice.params,
        inner_score=None if np.isnan(choice.inner_score) else round(float(choice.inner_score), 6),
        y_pred=[int(p) for p in pred],
        majority=majority_class(y[train], n_classes),
    )


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
) -> list[FoldResult]:
    """Run every fold (joblib, n_jobs); results in fold order, independent of n_jobs."""
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
