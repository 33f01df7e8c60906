"""The OOD score (relative Mahalanobis) on plain arrays, and how bundles carry it."""

import json

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from microfer.bench.ood_eval import auroc
from microfer.errors import BundleError
from microfer.learn.bundle import OOD_FILE, ArraySVM, load_bundle, save_bundle
from microfer.learn.ood import RelativeMahalanobis, fit_ood, held_out_scores

CONFIG = {"classes": ["a", "b", "c"], "prepare": {}, "features": {}, "svm": {}}


def _data(n_per_subject=6, subjects=8, d=40, seed=0, basis=None):
    """3 classes in a low-dimensional subspace of d columns, plus a per-subject offset."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(5, d)) if basis is None else basis
    X, y, g = [], [], []
    for s in range(subjects):
        offset = rng.normal(size=5) * 0.3
        for i in range(n_per_subject):
            c = i % 3
            z = rng.normal(size=5) + offset
            z[c] += 3.0
            X.append(z @ basis + rng.normal(size=d) * 0.1)
            y.append(c)
            g.append(f"s{s}")
    return np.array(X), np.array(y), np.array(g), basis, rng


@pytest.mark.parametrize("d", [20, 400])  # fewer, and many more, columns than the 48 rows
def test_score_separates_far_inputs_and_the_threshold_keeps_new_subjects(d):
    X, y, g, basis, rng = _data(d=d)
    model = fit_ood(X, y, g)
    new = _data(d=d, subjects=3, seed=1, basis=basis)[0]  # new subjects, same distribution
    far = [
        rng.normal(size=(10, d)) * X.std() * 5,  # noise
        X[:10].mean(0) + (rng.normal(size=(10, 5)) * 15) @ basis,
    ]  # far along the data's own directions
    ind_scores = model.score(new)
    for out in far:
        assert auroc(ind_scores, model.score(out)) > 0.95
        assert model.is_ood(out).mean() > 0.9
    assert model.is_ood(new).mean() <= 0.25  # ~5% by design; a small sample


def test_threshold_is_the_percentile_of_left_out_subjects():
    X, y, g, _, _ = _data()
    model = fit_ood(X, y, g, percentile=80)
    assert model.threshold == pytest.approx(np.percentile(held_out_scores(X, y, g), 80))
    # left-out scores are higher than in-sample ones: that is why they set the threshold
    assert np.median(held_out_scores(X, y, g)) > np.median(model.score(X))


def test_arrays_round_trip_gives_the_same_scores():
    X, y, g, _, rng = _data()
    model = fit_ood(X, y, g)
    again = RelativeMahalanobis.from_arrays(model.arrays(), json.loads(json.dumps(model.config())))
    Q = rng.normal(size=(7, X.shape[1]))
    np.testing.assert_allclose(again.score(Q), model.score(Q))
    assert again.threshold == model.threshold and again.config() == model.config()


def _bundle(tmp_path, with_ood=True):
    X, y, g, _, _ = _data()
    pipe = make_pipeline(StandardScaler(), SVC(kernel="rbf")).fit(X, y)
    ood = fit_ood(X, y, g) if with_ood else None
    path = save_bundle(
        tmp_path / "b",
        network_state={},
        classifier=ArraySVM.from_pipeline(pipe),
        config=CONFIG,
        ood=ood,
    )
    return path, ood, X


def test_bundle_carries_the_score_under_its_integrity_hash(tmp_path):
    path, ood, X = _bundle(tmp_path)
    b = load_bundle(path)
    np.testing.assert_allclose(b.ood.score(X), ood.score(X))
    doc = json.loads((path / "bundle.json").read_text())
    assert doc["ood"]["threshold"] == pytest.approx(ood.threshold) and OOD_FILE in doc["files"]
    data = bytearray((path / OOD_FILE).read_bytes())
    data[-3] ^= 0x01
    (path / OOD_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=OOD_FILE):
        load_bundle(path)


def test_threshold_edit_is_refused(tmp_path):
    path, _, _ = _bundle(tmp_path)
    doc = json.loads((path / "bundle.json").read_text())
    doc["ood"]["threshold"] = 1e9
    (path / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="integrity"):
        load_bundle(path)


def test_bundle_without_ood_still_loads_and_overwrite_drops_a_stale_file(tmp_path):
    _bundle(tmp_path, with_ood=True)
    path, _, _ = _bundle(tmp_path, with_ood=False)  # same folder, rewritten without a score
    assert not (path / OOD_FILE).exists()
    b = load_bundle(path)
    assert b.ood is None and "ood" not in b.config


def test_auroc_counts_refused_inputs_as_rejected_and_ties_as_half():
    from microfer.bench.ood_eval import Scored, summarise

    assert auroc(np.array([0.0, 1.0]), np.array([2.0, np.inf])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    rows = [
        Scored("in distribution", "a", 0.0),
        Scored("in distribution", "b", 2.0),
        Scored("noise", "c", 3.0),
        Scored("noise", "d", float("inf"), "no face found"),
    ]
    table = {t["inputs"]: t for t in summarise(rows, threshold=1.0)}
    assert table["in distribution"]["rejected"] == 0.5
    assert table["noise"] == {
        "inputs": "noise",
        "n": 2,
        "auroc": 1.0,
        "rejected": 1.0,
        "score_rejected": 1.0,
        "no_face": 1,
    }
    # predict's verdict (an input check above its threshold) counts even where the score is low
    rows[0] = Scored("in distribution", "a", 0.0, flagged=True)
    table = {t["inputs"]: t for t in summarise(rows, threshold=1.0)}
    assert table["in distribution"]["rejected"] == 1.0
    assert table["in distribution"]["score_rejected"] == 0.5


def test_threshold_with_a_subject_too_big_to_leave_out():
    """Two subjects, one holding all but one row: leaving it out leaves 1 row, so only the
    other subject's scores set the threshold (no error, no NaN)."""
    X, y, _, _, _ = _data(subjects=2)
    groups = np.array(["big"] * (len(X) - 1) + ["small"])
    model = fit_ood(X, y, groups)
    assert np.isfinite(model.threshold)
    assert model.threshold == pytest.approx(held_out_scores(X, y, groups)[-1])
