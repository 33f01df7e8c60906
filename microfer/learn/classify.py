"""StandardScaler + SVC, and a grid search that only ever looks at training subjects.

Two levels of choice are made from data, both INSIDE the training part of an outer fold:
- the feature set (variant x representation x layer) together with the SVM settings
  (kernel, C, gamma, class_weight): `select_and_fit`, which an outer LOSO fold calls with
  its own training indices -- the one grid search;
- `GridSearchSVM`, the same search on one feature set as a scikit-learn estimator taking
  `groups` in fit.
The inner split is leave-one-subject-out when the training part has at most
`inner_splits` subjects, else GroupKFold(inner_splits) over the training subjects
(deterministic: no shuffling). Candidates are scored by UF1 on the inner predictions
POOLED over the inner folds (the same convention as the outer metric); ties go to the
first candidate in grid order, so put the simpler settings first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.dummy import DummyClassifier
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut, ParameterGrid
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from microfer.metrics import score as metric_score

SMALL_PARAM_GRID: list[dict[str, Any]] = [
    {"kernel": ["linear"], "C": [0.1, 1.0], "class_weight": ["balanced"]},
    {"kernel": ["rbf"], "C": [1.0, 10.0], "gamma": ["scale"], "class_weight": ["balanced"]},
]
# ~12 candidates: with 18 feature sets of `--grid full` that is ~70k SVC fits at composite scale
FULL_PARAM_GRID: list[dict[str, Any]] = [
    {"kernel": ["linear"], "C": [0.01, 0.1, 1.0, 10.0], "class_weight": ["balanced"]},
    {
        "kernel": ["rbf"],
        "C": [0.1, 1.0, 10.0, 100.0],
        "gamma": ["scale"],
        "class_weight": ["balanced", None],
    },
]
SVM_KEYS = ("kernel", "C", "gamma", "class_weight")


def expand_grid(param_grid) -> list[dict[str, Any]]:
    """A dict of lists, a list of them, or a list of plain dicts -> list of candidates, in order."""
    if param_grid is None:
        param_grid = SMALL_PARAM_GRID
    if isinstance(param_grid, Mapping):
        param_grid = [param_grid]
    out: list[dict[str, Any]] = []
    for part in param_grid:
        if all(isinstance(v, (list, tuple)) for v in part.values()):
            # ParameterGrid sorts keys, so the candidate order is fixed by the values' order
            out.extend(dict(p) for p in ParameterGrid(part))
        else:
            out.append(dict(part))
    for cand in out:
        unknown = set(cand) - set(SVM_KEYS)
        if unknown:
            raise ValueError(f"unknown SVM parameter(s) {sorted(unknown)}; expected {SVM_KEYS}")
    if not out:
        raise ValueError("the SVM parameter grid is empty")
    return out


def make_svm(kernel: str = "rbf", C: float = 1.0, gamma="scale", class_weight=None) -> Pipeline:
    """StandardScaler + SVC: the scaler is part of the model, so it is fitted on training rows only."""
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("svc", SVC(kernel=kernel, C=C, gamma=gamma, class_weight=class_weight)),
        ]
    )


def fit_estimator(make_estimator: Callable[..., Any], params: dict, X: np.ndarray, y: np.ndarray):
    # An inner fold can hold a single class (rare classes, few subjects); SVC refuses that,
    # and predicting the one class seen is the only sensible answer.
    if np.unique(y).size < 2:
        return DummyClassifier(strategy="most_frequent").fit(X, y)
    return make_estimator(**params).fit(X, y)


def class_scores(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) scores of a fitted model, whatever kind it is (columns = class index)."""
    out = np.zeros((len(X), n_classes), np.float64)
    classes = np.asarray(getattr(model, "classes_", np.arange(n_classes)), np.int64)
    if hasattr(model, "decision_function") and not hasattr(model, "predict_proba"):
        d = np.asarray(model.decision_function(X), np.float64)
        if d.ndim == 1:  # two classes: the positive class's margin
            d = np.stack([-d, d], axis=1)
        out[:, classes] = d
    elif hasattr(model, "predict_proba"):
        out[:, classes] = np.asarray(model.predict_proba(X), np.float64)
    else:  # a model that only labels (e.g. a test's spy): its one vote
        out[np.arange(len(X)), np.asarray(model.predict(X), np.int64)] = 1.0
    return out


def oof_scores(X, y, splits, params, n_classes, make_estimator) -> np.ndarray:
    """Out-of-fold class scores of one member over the inner splits (rows of X)."""
    out = np.zeros((len(y), n_classes))
    for tr, va in splits:
        out[va] = class_scores(
            fit_estimator(make_estimator, params, X[tr], y[tr]), X[va], n_classes
        )
    return out


def inner_splits_for(groups: np.ndarray, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner (train, validation) index pairs over the given groups only."""
    groups = np.asarray(groups)
    n_groups = np.unique(groups).size
    if n_groups < 2:
        raise ValueError(
            f"inner cross-validation needs at least 2 subjects in the training part, got {n_groups}"
        )
    splitter = LeaveOneGroupOut() if n_groups <= n_splits else GroupKFold(n_splits=n_splits)
    dummy = np.zeros(groups.size)
    return [(tr, va) for tr, va in splitter.split(dummy, dummy, groups)]


def inner_cv_score(
    X: np.ndarray,
    y: np.ndarray,
    splits,
    params: dict,
    n_classes: int,
    scoring: str = "uf1",
    make_estimator: Callable[..., Any] = make_svm,
) -> float:
    """Score of one candidate: predictions of every inner fold pooled, then one metric."""
    pred = np.empty_like(y)
    covered = np.zeros(y.size, bool)
    for tr, va in splits:
        pred[va] = fit_estimator(make_estimator, params, X[tr], y[tr]).predict(X[va])
        covered[va] = True
    return metric_score(y[covered], pred[covered], n_classes, scoring)


class GridSearchSVM(ClassifierMixin, BaseEstimator):
    """Scaler + SVC whose settings are chosen by inner group-wise CV on the training data.

    fit(X, y, groups): `groups` (subjects) decide the inner split; without groups each
    sample is its own group. Attributes after fit: classes_, best_params_, best_score_,
    cv_results_ (candidate -> inner score), best_estimator_, n_features_in_.
    """

    def __init__(self, param_grid=None, inner_splits: int = 5, scoring: str = "uf1"):
        self.param_grid = param_grid
        self.inner_splits = inner_splits
        self.scoring = scoring

    def fit(self, X, y, groups=None):
        X, y = validate_data(self, X, y, dtype=np.float64)
        if self.inner_splits < 2:
            raise ValueError(f"inner_splits must be >= 2, got {self.inner_splits}")
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if groups.shape != (len(y),):
            raise ValueError(
                f"groups must have one entry per sample ({len(y)}), got shape {groups.shape}"
            )
        self.classes_ = unique_labels(y)
        if self.classes_.size < 2:
            raise ValueError(
                f"need samples of at least 2 classes to fit, got 1 class ({self.classes_.tolist()})"
            )
        yi = np.searchsorted(self.classes_, y)
        # the one grid search of microfer, on a single feature set over all of X
        choice = select_and_fit(
            {"X": X},
            yi,
            groups,
            np.arange(len(yi)),
            inner_splits=self.inner_splits,
            param_grid=self.param_grid,
            scoring=self.scoring,
            n_classes=self.classes_.size,
        )
        candidates = expand_grid(self.param_grid)
        self.cv_results_ = [
            {"params": p, "score": s} for p, s in zip(candidates, choice.scores["X"])
        ]
        self.best_params_, self.best_score_ = choice.params, float(choice.inner_score)
        self.best_estimator_ = choice.model
        return self

    def _check_X(self, X):
        check_is_fitted(self, "best_estimator_")
        return validate_data(self, X, dtype=np.float64, reset=False)

    def predict(self, X):
        X = self._check_X(X)
        return self.classes_[self.best_estimator_.predict(X)]

    def decision_function(self, X):
        X = self._check_X(X)
        return self.best_estimator_.decision_function(X)


class LearnedFeatures:
    """A feature_sets entry for a candidate TRAINED on each fold's rows (e.g. a small CNN).

    As an array it is the column of sample indices (N, 1), so every split, row selection
    and fit of the grid search works on it unchanged; `make_estimator()` builds the
    model that trains on the inputs of the rows it is fitted on (`learn.finetune`). Its
    recipe is fixed, so it is ONE candidate of the grid (no SVM settings).
    """

    def __init__(self, make_estimator: Callable[..., Any], n: int):
        self.make_estimator, self.n = make_estimator, int(n)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, 1)

    def __len__(self) -> int:
        return self.n

    def __array__(self, dtype=None, copy=None):
        return np.arange(self.n, dtype=dtype or np.int64)[:, None]


def candidates_of(X, candidates, make_estimator):
    """(SVM-settings candidates, estimator factory) for one feature_sets entry."""
    if isinstance(X, LearnedFeatures):
        return [{}], X.make_estimator
    return candidates, make_estimator


@dataclass
class FittedChoice:
    """What one outer fold chose on its training part, and the model fitted with it."""

    feature_name: str
    params: dict[str, Any]
    inner_score: float
    model: Any
    scores: dict[str, list[float]] = field(
        default_factory=dict
    )  # feature set -> score per candidate

    def predict(self, feature_sets: Mapping[str, np.ndarray], idx) -> np.ndarray:
        return self.model.predict(np.asarray(feature_sets[self.feature_name])[idx])


# Over ~60 lines by its 12-argument signature and docstring: the search reads in one place.
def select_and_fit(
    feature_sets: Mapping[str, np.ndarray],
    y: np.ndarray,
    groups: np.ndarray,
    train_idx: np.ndarray,
    inner_splits: int = 5,
    param_grid=None,
    seed: int = 0,
    scoring: str = "uf1",
    n_classes: Optional[int] = None,
    make_estimator: Callable[..., Any] = make_svm,
    n_jobs: int = 1,
) -> FittedChoice:
    """Pick feature set + SVM settings by inner CV on `train_idx` only, then fit on all of it.

    `y` are integer class indices for ALL samples; only rows `train_idx` of `y`,
    `groups` and each feature set are ever read. Candidates: feature sets in the order
    given x `param_grid` in order; the first best wins. `seed` is accepted for API
    stability: every step here is deterministic (unshuffled GroupKFold, SVC without
    probability), so it changes nothing today. `make_estimator(**params)` builds the
    model (tests pass a spy). `n_jobs` != 1: the candidates are scored in parallel (joblib,
    e.g. on a dask cluster); the scores, hence the choice, are the same.
    """
    del seed
    train_idx = np.asarray(train_idx)
    y = np.asarray(y)
    groups = np.asarray(groups)
    if train_idx.size == 0:
        raise ValueError("select_and_fit: the training part is empty")
    if not feature_sets:
        raise ValueError("select_and_fit: no feature sets given")
    y_tr, g_tr = y[train_idx], groups[train_idx]
    k = int(n_classes if n_classes is not None else y.max() + 1)
    candidates = expand_grid(param_grid)
    plan = [
        (name, X, *candidates_of(X, candidates, make_estimator)) for name, X in feature_sets.items()
    ]
    scores: dict[str, list[float]] = {name: [] for name, *_ in plan}
    if len(plan) == 1 and isinstance(plan[0][1], LearnedFeatures):
        # a learned candidate alone needs no choosing: inner CV would train for nothing
        name, X, (params,), est = plan[0]
        model = fit_estimator(est, params, np.asarray(X)[train_idx], y_tr)
        return FittedChoice(name, dict(params), float("nan"), model, {name: [float("nan")]})
    splits = inner_splits_for(g_tr, inner_splits)
    tasks = [
        (np.asarray(X)[train_idx], y_tr, splits, params, k, scoring, est)
        for _, X, cands, est in plan
        for params in cands
    ]
    if n_jobs != 1:
        from joblib import Parallel, delayed

        computed = Parallel(n_jobs=n_jobs)(delayed(inner_cv_score)(*t) for t in tasks)
    else:
        computed = [inner_cv_score(*t) for t in tasks]
    best: Optional[tuple[float, str, dict, Any]] = None
    done = iter(computed)  # in task order
    for name, X, cands, est in plan:
        for params in cands:
            s = next(done)
            s = -1.0 if np.isnan(s) else float(s)
            scores[name].append(s)
            if best is None or s > best[0]:
                best = (s, name, params, est)
    assert best is not None
    score_, name, params, est = best
    model = fit_estimator(est, params, np.asarray(feature_sets[name])[train_idx], y_tr)
    return FittedChoice(
        feature_name=name, params=dict(params), inner_score=score_, model=model, scores=scores
    )
