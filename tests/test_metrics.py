import math

import numpy as np
import pytest

from microfer.learn.evaluate import FoldResult, compute_metrics
from microfer.metrics import (
    accuracy,
    confusion_matrix,
    majority_class,
    per_class_f1,
    score,
    summarize,
    uar,
    uf1,
)

# Toy problem, 4 classes a b c d, 8 samples:
#   truth a: predicted a a a b      truth b: predicted b b a c
#   c is never true but predicted once; d is neither true nor predicted.
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 1]
Y_PRED = [0, 0, 0, 1, 1, 1, 0, 2]
CM = [[3, 1, 0, 0], [1, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_confusion_matrix_of_toy():
    assert confusion_matrix(Y_TRUE, Y_PRED, 4).tolist() == CM


def test_uf1_by_hand():
    # F1 = 2TP / (2TP + FP + FN)
    # a: TP 3, FP 1 (a b predicted a), FN 1        -> 6 / 8 = 0.75
    # b: TP 2, FP 1, FN 2                           -> 4 / 7
    # c: TP 0, FP 1, FN 0                           -> 0 / 1 = 0   (predicted, never true: counts)
    # d: 0 / 0                                      -> skipped
    # UF1 = (0.75 + 4/7 + 0) / 3 = 37 / 84
    cm = np.array(CM)
    f1 = per_class_f1(cm)
    assert f1[:3] == pytest.approx([0.75, 4 / 7, 0.0])
    assert math.isnan(f1[3])
    assert uf1(cm) == pytest.approx(37 / 84)


def test_uar_and_accuracy_by_hand():
    # recall a = 3/4, b = 2/4; c and d absent from the truth -> skipped: UAR = 0.625
    # accuracy = (3 + 2) / 8
    cm = np.array(CM)
    assert uar(cm) == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert accuracy(cm) == pytest.approx(5 / 8)
    assert score(Y_TRUE, Y_PRED, 4, "uf1") == pytest.approx(37 / 84)


def test_summarize_is_json_ready_and_marks_skipped_classes():
    s = summarize(Y_TRUE, Y_PRED, ["a", "b", "c", "d"])
    assert s["n"] == 8 and s["confusion"] == CM
    assert s["uf1"] == pytest.approx(37 / 84, abs=1e-6)
    assert s["per_class"]["d"]["f1"] is None and s["per_class"]["c"]["f1"] == 0.0
    assert s["per_class"]["a"]["support"] == 4 and s["per_class"]["c"]["predicted"] == 1


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 5], [0, 1], 3)
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(ValueError, match="unknown metric"):
        score([0], [0], 2, "f2")


def test_majority_class_ties_go_to_lowest_index():
    assert majority_class([2, 2, 1, 1, 0], 3) == 1
    assert majority_class([2, 2, 2, 0], 3) == 2


def test_metrics_are_pooled_over_folds_not_averaged():
    # fold s1 (1 sample) all wrong, fold s2 (3 samples) all right:
    # per-fold accuracy mean would be 0.5; pooled accuracy is 3/4.
    y = np.array([0, 1, 1, 0])
    results = [
        FoldResult("s1", [0], 3, "f", {}, 0.0, [1], majority=1),
        FoldResult("s2", [1, 2, 3], 1, "f", {}, 0.0, [1, 1, 0], majority=0),
    ]
    m = compute_metrics(y, results, ["x", "y"], datasets=["d1", "d1", "d2", "d2"])
    assert m["pooled"]["accuracy"] == pytest.approx(0.75)
    # majority baseline: fold s1 predicts its training majority 1 (wrong), s2 predicts 0 (right for 1 of 3)
    assert m["majority"]["accuracy"] == pytest.approx(1 / 4)
    assert m["per_dataset"]["d2"]["model"]["n"] == 2
    assert [r["group"] for r in m["per_subject"]] == ["s1", "s2"]
    assert m["per_subject"][1]["accuracy"] == pytest.approx(1.0)


def test_bootstrap_interval_sanity():
    from microfer.metrics import bootstrap_interval, score

    rng = np.random.default_rng(0)
    groups = np.repeat([f"s{i}" for i in range(12)], 6)
    y = rng.integers(0, 3, groups.size)
    # perfect predictions: every resample scores 1
    perfect = bootstrap_interval(y, y, groups, 3, n_boot=200)
    assert perfect["uf1"] == [1.0, 1.0] and perfect["uar"] == [1.0, 1.0]
    # noisy predictions: the interval is a real interval around the point estimate
    pred = np.where(rng.random(y.size) < 0.6, y, rng.integers(0, 3, y.size))
    b = bootstrap_interval(pred, y, groups, 3, n_boot=500)
    for m in ("uf1", "uar"):
        lo, hi = b[m]
        assert lo < score(pred, y, 3, m) < hi and hi - lo > 0.02
    # a fixed function of its inputs and seed; another seed resamples differently
    assert bootstrap_interval(pred, y, groups, 3, n_boot=500) == b
    assert bootstrap_interval(pred, y, groups, 3, n_boot=500, seed=1) != b
    with pytest.raises(ValueError, match="2 subjects"):
        bootstrap_interval(y, y, np.zeros(y.size), 3)


def test_subject_halves_alternate_sorted_subjects():
    from microfer.learn.evaluate import subject_halves

    groups = np.array(["b/2", "a/1", "c/3", "a/1", "d/4", "b/2"])
    y = np.array([0, 1, 2, 1, 0, 0])
    pred = np.array([0, 1, 0, 1, 1, 1])  # A = a/1, c/3 ; B = b/2, d/4
    h = subject_halves(y, pred, groups, ["x", "y", "z"])
    assert h["A"]["subjects"] == ["a/1", "c/3"] and h["B"]["subjects"] == ["b/2", "d/4"]
    assert h["A"]["n"] == 3 and h["B"]["n"] == 3
    assert h["A"]["accuracy"] == pytest.approx(2 / 3) and h["B"]["accuracy"] == pytest.approx(1 / 3)
