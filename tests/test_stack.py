"""Stacking inside the fold: weights from inner folds only, used only when it helps."""

from __future__ import annotations

import numpy as np

from microfer.learn.stack import STACK_NAME, StackModel, class_scores, stack_select_and_fit

GRID = [{"kernel": "linear", "C": 1.0, "class_weight": "balanced"}]


def two_views(n_subjects=6, per=12, seed=0):
    """View a tells class 0 from the rest, view b tells 1 from 2: only together they see all."""
    rng = np.random.default_rng(seed)
    n = n_subjects * per
    y = np.tile(np.arange(3), n // 3)
    a = rng.normal(size=(n, 4)) + (y == 0)[:, None] * 2.5
    # class 0 sits at either end of view b, so b alone cannot find it
    zero_side = np.where(rng.random(n) < 0.5, 2.5, -2.5)
    shift = np.where(y == 1, 2.5, np.where(y == 2, -2.5, zero_side))
    b = rng.normal(size=(n, 4)) + shift[:, None]
    groups = np.repeat([f"d/s{i}" for i in range(n_subjects)], per)
    return {"a": a, "b": b}, y, groups


def test_stack_of_complementary_views_is_chosen_and_predicts():
    feats, y, groups = two_views()
    train = np.flatnonzero(groups != "d/s0")
    test = np.flatnonzero(groups == "d/s0")
    choice = stack_select_and_fit(feats, y, groups, train, inner_splits=5, param_grid=GRID)
    assert choice.feature_name == STACK_NAME
    assert choice.inner_score > max(max(choice.scores["a"]), max(choice.scores["b"]))
    assert (choice.predict(feats, test) == y[test]).mean() > 0.8


def test_stack_weights_come_from_inner_folds_only():
    feats, y, groups = two_views()
    train = np.flatnonzero(groups != "d/s0")
    test = np.flatnonzero(groups == "d/s0")
    first = stack_select_and_fit(feats, y, groups, train, inner_splits=5, param_grid=GRID)
    # the held-out subject's features and labels replaced: the learned weights must not move
    rng = np.random.default_rng(9)
    feats2 = {k: v.copy() for k, v in feats.items()}
    for v in feats2.values():
        v[test] = rng.normal(size=(test.size, v.shape[1])) * 10
    y2 = y.copy()
    y2[test] = (y2[test] + 1) % 3
    second = stack_select_and_fit(feats2, y2, groups, train, inner_splits=5, param_grid=GRID)
    assert isinstance(first.model, StackModel) and isinstance(second.model, StackModel)
    np.testing.assert_array_equal(first.model.stacker.coef_, second.model.stacker.coef_)
    assert first.model.stacker.n_features_in_ == 2 * 3  # two members x three class scores
    # the members (an apex-appearance view is one like any other) are fitted on training rows only
    assert first.params == second.params
    for name, m1, m2 in zip(first.model.names, first.model.members, second.model.members):
        rows = feats[name][train]
        np.testing.assert_array_equal(class_scores(m1, rows, 3), class_scores(m2, rows, 3))


def test_best_member_kept_when_the_stack_is_no_better():
    feats, y, groups = two_views()
    feats["perfect"] = np.eye(3)[y] * 5.0
    train = np.flatnonzero(groups != "d/s0")
    choice = stack_select_and_fit(feats, y, groups, train, inner_splits=5, param_grid=GRID)
    assert choice.feature_name == "perfect"
    assert choice.scores[STACK_NAME][0] <= choice.inner_score


def test_evaluate_folds_with_stack_runs_the_stack_and_leaves_it_uncalibrated():
    """`stack=True` reaches `stack_select_and_fit` (an import lost in a refactor once made it a
    no-op); a stacked fold gets no probabilities, the others do."""
    from microfer.learn.folds import evaluate_folds, leave_one_group_out

    feats, y, groups = two_views()
    folds = leave_one_group_out(groups)[:2]
    results = evaluate_folds(
        feats, y, groups, folds, param_grid=GRID, inner_splits=5, stack=True, calibrate=True
    )
    assert any(r.feature_name == STACK_NAME for r in results)
    for r in results:
        assert (r.probabilities is None) == (r.feature_name == STACK_NAME)


def test_loso_fold_uses_the_stack_when_asked():
    """`--grid stack*` reaches the stack through run_fold (a lost import once made it a no-op)."""
    from types import SimpleNamespace

    from microfer.learn.folds import run_fold

    feats, y, groups = two_views()
    test = np.flatnonzero(groups == "d/s0")
    fold = SimpleNamespace(group="d/s0", train_idx=np.flatnonzero(groups != "d/s0"), test_idx=test)
    args = (feats, y, groups, fold, GRID, 5, 3, 0)
    stacked, single = run_fold(*args, stack=True), run_fold(*args, stack=False)
    assert stacked.feature_name == STACK_NAME
    assert single.feature_name in ("a", "b")
    assert stacked.inner_score > single.inner_score
