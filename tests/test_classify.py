import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.svm import SVC

from microfer.learn.classify import (
    GridSearchSVM,
    expand_grid,
    inner_splits_for,
    make_svm,
    select_and_fit,
)
from microfer.learn.evaluate import leave_one_group_out


def blobs(n_groups=6, per_group=9, n_classes=3, dim=8, noise=1.0, seed=0):
    """Class-dependent means + a per-subject offset (what makes LOSO hard)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(n_classes, dim))
    X, y, g = [], [], []
    for s in range(n_groups):
        offset = rng.normal(0, 0.5, size=dim)
        for i in range(per_group):
            c = i % n_classes
            X.append(centres[c] + offset + rng.normal(0, noise, size=dim))
            y.append(c)
            g.append(f"d/s{s}")
    return np.array(X), np.array(y), np.array(g)


class SpySVM:
    """Records the subject ids (column 0 of X, by construction) of every fit."""

    log: list = []

    def __init__(self, **params):
        self.inner = make_svm(**params)

    def fit(self, X, y):
        SpySVM.log.append(set(np.round(X[:, 0]).astype(int).tolist()))
        self.inner.fit(X, y)
        return self

    def predict(self, X):
        return self.inner.predict(X)


def test_grid_search_svm_is_a_proper_estimator():
    X, y, g = blobs()
    est = GridSearchSVM(inner_splits=3)
    copy = clone(est)
    assert copy.get_params() == est.get_params()
    labels = np.array(["neg", "pos", "sur"])[y]
    copy.fit(X, labels, groups=g)
    pred = copy.predict(X)
    assert set(pred) <= set(labels) and (pred == labels).mean() > 0.8
    assert copy.decision_function(X).shape == (len(X), 3)
    assert len(copy.cv_results_) == len(expand_grid(None))
    assert copy.best_score_ == max(r["score"] for r in copy.cv_results_)


def test_grid_search_svm_validates_input():
    X, y, g = blobs()
    est = GridSearchSVM(inner_splits=3)
    with pytest.raises(NotFittedError):
        est.predict(X)
    with pytest.raises(ValueError):
        est.fit(X, y[:-1], groups=g)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError):
        est.fit(Xn, y, groups=g)
    with pytest.raises(ValueError, match="groups"):
        est.fit(X, y, groups=g[:-1])
    with pytest.raises(ValueError, match="2 classes"):
        est.fit(X, np.zeros_like(y), groups=g)
    est.fit(X, y, groups=g)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :3])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_grid_search_svm_passes_sklearn_checks():
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(GridSearchSVM(inner_splits=2), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert failed == []


def test_inner_split_uses_only_given_groups():
    groups = np.array(["a"] * 3 + ["b"] * 3 + ["c"] * 2)
    splits = inner_splits_for(groups, 5)  # 3 groups <= 5 -> leave one group out
    assert len(splits) == 3
    for tr, va in splits:
        assert not set(groups[tr]) & set(groups[va])
    with pytest.raises(ValueError, match="at least 2 subjects"):
        inner_splits_for(np.array(["a", "a"]), 5)


def test_inner_selection_never_sees_the_test_subject():
    X, y, g = blobs(n_groups=5)
    subject_id = np.array([int(s.split("s")[-1]) for s in g])
    # column 0 = subject id in both feature sets: the spy reads who each fit saw
    sets = {"a": np.column_stack([subject_id, X]), "b": np.column_stack([subject_id, 2 * X])}
    grid = [{"kernel": "linear", "C": 1.0}, {"kernel": "rbf", "C": 1.0}]
    for fold in leave_one_group_out(g):
        held_out = int(fold.group.split("s")[-1])
        SpySVM.log = []
        choice = select_and_fit(
            sets, y, g, fold.train_idx, inner_splits=3, param_grid=grid, make_estimator=SpySVM
        )
        # 2 feature sets x 2 candidates x (inner folds) + the final fit
        assert len(SpySVM.log) >= 2 * 2 * 3 + 1
        assert all(held_out not in seen for seen in SpySVM.log)
        assert SpySVM.log[-1] == set(
            subject_id[fold.train_idx].tolist()
        )  # final fit: all training subjects
        assert choice.feature_name in ("a", "b")


def test_select_and_fit_prefers_the_informative_feature_set_and_is_deterministic():
    X, y, g = blobs(noise=0.8)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=X.shape)
    fold = leave_one_group_out(g)[0]
    runs = [
        select_and_fit({"noise": noise, "signal": X}, y, g, fold.train_idx, inner_splits=3)
        for _ in range(2)
    ]
    assert runs[0].feature_name == "signal"
    assert runs[0].inner_score > 0.8 and max(runs[0].scores["noise"]) < runs[0].inner_score
    assert runs[0].params == runs[1].params and runs[0].inner_score == runs[1].inner_score
    pred = runs[0].predict({"noise": noise, "signal": X}, fold.test_idx)
    assert np.array_equal(pred, runs[1].predict({"noise": noise, "signal": X}, fold.test_idx))
    assert isinstance(runs[0].model.named_steps["svc"], SVC)


def test_expand_grid_keeps_order_and_rejects_unknown_keys():
    cands = expand_grid([{"kernel": ["linear"], "C": [0.1, 1.0]}, {"kernel": "rbf", "C": 3.0}])
    assert cands == [
        {"C": 0.1, "kernel": "linear"},
        {"C": 1.0, "kernel": "linear"},
        {"kernel": "rbf", "C": 3.0},
    ]
    with pytest.raises(ValueError, match="unknown SVM parameter"):
        expand_grid({"kernel": ["rbf"], "degree": [3]})
