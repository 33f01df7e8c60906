"""Calibrated probabilities (`learn.calibrate`): in LOSO folds fitted on training subjects only,
in bundles (format version 3), and old bundles without a calibrator still loading."""

import json

import numpy as np
import pytest
import torch
from test_classify import SpySVM, blobs

from microfer.errors import BundleError
from microfer.learn.bundle import (
    ArraySVM,
    file_sha256,
    integrity_digest,
    load_bundle,
    save_bundle,
)
from microfer.learn.calibrate import fit_calibrator
from microfer.learn.classify import class_scores, make_svm
from microfer.learn.evaluate import compute_metrics, evaluate_folds, leave_one_group_out
from microfer.learn.folds import fold_calibrator
from microfer.recognise.predict import calibrated

GRID = [{"kernel": "linear", "C": 1.0}, {"kernel": "rbf", "C": 1.0}]


def test_fold_probabilities_sum_to_one_and_leave_the_labels_alone():
    X, y, g = blobs(n_groups=5, noise=2.0)
    folds = leave_one_group_out(g)
    plain = evaluate_folds({"X": X}, y, g, folds, param_grid=GRID, inner_splits=3)
    cal = evaluate_folds({"X": X}, y, g, folds, param_grid=GRID, inner_splits=3, calibrate=True)
    assert [r.y_pred for r in cal] == [r.y_pred for r in plain]
    assert all(r.probabilities is None for r in plain)
    for r in cal:
        p = np.asarray(r.probabilities)
        assert p.shape == (len(r.test_idx), 3)
        assert (p >= 0).all() and (p <= 1).all()
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
        assert r.n_calibration == r.n_train
    m = compute_metrics(y, cal, ["a", "b", "c"])["calibration"]
    assert m["n"] == len(y) and m["folds_not_calibrated"] == []
    assert 0 <= m["brier"] <= 2 and 0 <= m["ece"] <= 1
    assert set(m["halves"]) == {"A", "B"} and sum(b["n"] for b in m["reliability"]) == len(y)
    assert "calibration" not in compute_metrics(y, plain, ["a", "b", "c"])


def test_fold_calibrator_is_fitted_without_the_test_subject():
    X, y, g = blobs(n_groups=5)
    subject_id = np.array([int(s.split("s")[-1]) for s in g])
    sets = {"a": np.column_stack([subject_id, X])}  # column 0: who each fit saw (the spy reads it)
    for fold in leave_one_group_out(g):
        held_out = int(fold.group.split("s")[-1])
        choice = type("Choice", (), {"feature_name": "a", "params": GRID[0]})()
        SpySVM.log = []
        cal = fold_calibrator(sets, y, g, fold.train_idx, choice, 3, 3, make_estimator=SpySVM)
        assert np.intersect1d(cal.rows, fold.test_idx).size == 0
        np.testing.assert_array_equal(np.sort(cal.rows), np.sort(fold.train_idx))
        assert len(SpySVM.log) == 3 and all(held_out not in seen for seen in SpySVM.log)


def test_fold_calibrator_ignores_the_test_subjects_features_and_labels():
    X, y, g = blobs(n_groups=5, noise=2.0)
    fold = leave_one_group_out(g)[0]
    choice = type("Choice", (), {"feature_name": "X", "params": GRID[1]})()
    first = fold_calibrator({"X": X}, y, g, fold.train_idx, choice, 3, 3)
    X2, y2 = X.copy(), y.copy()
    X2[fold.test_idx] = np.random.default_rng(3).normal(size=(fold.test_idx.size, X.shape[1])) * 9
    y2[fold.test_idx] = (y2[fold.test_idx] + 1) % 3
    second = fold_calibrator({"X": X2}, y2, g, fold.train_idx, choice, 3, 3)
    np.testing.assert_array_equal(first.weight, second.weight)
    np.testing.assert_array_equal(first.bias, second.bias)


def test_calibrator_of_two_classes_and_of_a_class_never_seen():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200) * 2  # classes 0 and 2 of 3; class 1 never seen
    scores = np.zeros((200, 3))
    scores[:, 0], scores[:, 2] = -(y - 1) + rng.normal(0, 1, 200), (y - 1) + rng.normal(0, 1, 200)
    p = fit_calibrator(scores, y, 3).probabilities(scores)
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert p[:, 1].max() < 1e-9
    assert (p[:, 2] > 0.5).mean() > 0.8 * (y == 2).mean()
    one = fit_calibrator(scores, np.full(200, 2), 3).probabilities(scores)
    np.testing.assert_allclose(one[:, 2], 1.0)


def _bundle(tmp_path, with_calibrator: bool):
    X, y, _ = blobs(n_groups=4, noise=2.0)
    pipe = make_svm(kernel="rbf", C=1.0).fit(X, y)
    cal = fit_calibrator(class_scores(pipe, X, 3), y, 3) if with_calibrator else None
    path = save_bundle(
        tmp_path / "b",
        network_state={"w": torch.ones(2)},
        classifier=ArraySVM.from_pipeline(pipe),
        config={"classes": ["a", "b", "c"], "prepare": {}, "features": {}, "svm": {}},
        calibrator=cal,
    )
    return path, pipe, cal, X


def _rewrite(path, change):
    """Edit bundle.json and reseal it (what an older microfer's bundle looks like)."""
    doc = json.loads((path / "bundle.json").read_text())
    change(doc)
    hashes = {n: file_sha256(path / n) for n in doc["files"]}
    doc["integrity"]["content"] = integrity_digest(doc, hashes)
    (path / "bundle.json").write_text(json.dumps(doc))


def test_bundle_carries_the_calibrator_and_predict_uses_it(tmp_path):
    path, pipe, cal, X = _bundle(tmp_path, with_calibrator=True)
    b = load_bundle(path)
    assert json.loads((path / "bundle.json").read_text())["format_version"] == 3
    assert b.config["calibration"]["method"].startswith("multinomial logistic")
    for row in X[:5]:
        scores = b.classifier.class_scores(row[None])[0]
        got = calibrated(b, scores)
        want = cal.probabilities(class_scores(pipe, row[None], 3))[0]
        assert list(got) == ["a", "b", "c"]
        np.testing.assert_allclose(list(got.values()), want, atol=1e-4)
        assert abs(sum(got.values()) - 1) < 1e-3


def test_old_bundle_without_a_calibrator_loads_and_says_so(tmp_path):
    path, pipe, _, X = _bundle(tmp_path, with_calibrator=False)
    _rewrite(path, lambda doc: doc.update(format_version=2))
    b = load_bundle(path)
    assert b.calibrator is None
    np.testing.assert_array_equal(b.classifier.predict(X), pipe.predict(X))
    assert calibrated(b, b.classifier.class_scores(X[:1])[0]) is None


def test_malformed_calibrators_are_refused_naming_the_file(tmp_path):
    from safetensors.numpy import save_file

    path, _, cal, _ = _bundle(tmp_path, with_calibrator=True)
    _rewrite(path, lambda doc: doc.update(format_version=2))
    with pytest.raises(BundleError, match="calibration.*format-version-2"):
        load_bundle(path)
    _rewrite(path, lambda doc: doc.update(format_version=3))
    save_file({"weight": cal.weight[:2], "bias": cal.bias}, str(path / "calibrator.safetensors"))
    _rewrite(
        path,
        lambda doc: doc["files"].update(
            {"calibrator.safetensors": file_sha256(path / "calibrator.safetensors")}
        ),
    )
    with pytest.raises(BundleError, match="calibrator.safetensors.*'weight' has shape"):
        load_bundle(path)
    _rewrite(path, lambda doc: doc.pop("calibration"))
    with pytest.raises(BundleError, match="'calibration'"):
        load_bundle(path)
