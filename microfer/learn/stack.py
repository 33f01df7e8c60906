"""Stacking inside the fold: per-view scores combined with weights learned on inner folds.

For one outer fold (`stack_select_and_fit`, same arguments as `classify.select_and_fit`):
1. every member (feature set: descriptor SVM or learned network) gets its SVM settings by
   inner CV on the training subjects (the usual grid search), then its OUT-OF-FOLD class
   scores on those inner folds (each row scored by a model that never saw its subject);
2. the stacker, a multinomial logistic regression on the members' out-of-fold scores
   side by side, is what the weights are; it is fitted on those inner rows only;
3. the stack's own inner score comes from cross-fitting the stacker over the same inner
   folds (fitted on the other folds' out-of-fold rows, scored on the held-out one);
4. the stack is used only if that score beats the best single member's inner score;
   otherwise the best member is (so the stack is never chosen on a worse estimate).
The held-out subject is only predicted: members refitted on all training rows, combined
with the stacker's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np
from sklearn.linear_model import LogisticRegression

from microfer.learn.classify import (
    FittedChoice,
    candidates_of,
    class_scores,
    expand_grid,
    fit_estimator,
    inner_splits_for,
    make_svm,
    oof_scores,
    select_and_fit,
)
from microfer.metrics import score as metric_score

STACK_NAME = "stack"
STACKER_C = 1.0  # fixed in advance: sklearn's default regularisation


def _stacker(Z: np.ndarray, y: np.ndarray):
    if np.unique(y).size < 2:
        return None
    return LogisticRegression(C=STACKER_C, max_iter=1000).fit(Z, y)


def _stacker_predict(stacker, Z: np.ndarray, y_fallback: int) -> np.ndarray:
    return np.full(len(Z), y_fallback) if stacker is None else stacker.predict(Z)


@dataclass
class StackModel:
    """Members fitted on the fold's training rows + the stacker fitted on inner OOF scores."""

    names: list[str]
    members: list[Any]
    stacker: Any
    n_classes: int
    fallback: int

    def predict_sets(self, feature_sets: Mapping[str, Any], idx) -> np.ndarray:
        Z = np.hstack(
            [
                class_scores(m, np.asarray(feature_sets[n])[idx], self.n_classes)
                for n, m in zip(self.names, self.members)
            ]
        )
        return _stacker_predict(self.stacker, Z, self.fallback)


class StackChoice(FittedChoice):
    def predict(self, feature_sets, idx) -> np.ndarray:
        if isinstance(self.model, StackModel):
            return self.model.predict_sets(feature_sets, idx)
        return super().predict(feature_sets, idx)


def stack_select_and_fit(
    feature_sets: Mapping[str, Any],
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
    """See the module docstring; returns the stack or the best member as a FittedChoice."""
    train_idx, y, groups = np.asarray(train_idx), np.asarray(y), np.asarray(groups)
    k = int(n_classes if n_classes is not None else y.max() + 1)
    best = select_and_fit(
        feature_sets, y, groups, train_idx, inner_splits, param_grid, seed, scoring, k,
        make_estimator, n_jobs,
    )  # fmt: skip
    if len(feature_sets) < 2:
        return StackChoice(**vars(best))
    y_tr, splits = y[train_idx], inner_splits_for(groups[train_idx], inner_splits)
    candidates = expand_grid(param_grid)
    names, plans, Z = [], [], []
    for name, X in feature_sets.items():
        cands, est = candidates_of(X, candidates, make_estimator)
        params = cands[int(np.argmax(best.scores[name]))]  # the member's own inner choice
        Xt = np.asarray(X)[train_idx]
        names.append(name)
        plans.append((params, est))
        Z.append(oof_scores(Xt, y_tr, splits, params, k, est))
    Z = np.hstack(Z)
    # the stack's inner estimate: the stacker cross-fitted over the same inner folds
    pred = np.empty_like(y_tr)
    fallback = int(np.bincount(y_tr, minlength=k).argmax())
    for tr, va in splits:
        pred[va] = _stacker_predict(_stacker(Z[tr], y_tr[tr]), Z[va], fallback)
    stack_score = float(metric_score(y_tr, pred, k, scoring))
    scores = {**best.scores, STACK_NAME: [stack_score]}
    if not stack_score > best.inner_score:
        return StackChoice(best.feature_name, best.params, best.inner_score, best.model, scores)
    members = [
        fit_estimator(est, params, np.asarray(feature_sets[n])[train_idx], y_tr)
        for n, (params, est) in zip(names, plans)
    ]
    model = StackModel(names, members, _stacker(Z, y_tr), k, fallback)
    return StackChoice(STACK_NAME, {"members": names}, stack_score, model, scores)
