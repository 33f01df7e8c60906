import json
import pickle

import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from microfer.bundle import ArraySVM, load_bundle, save_bundle
from microfer.errors import BundleError

CONFIG = {"classes": ["negative", "positive", "surprise", "x", "y"], "prepare": {}, "features": {}, "svm": {}}


def _fitted(kernel, n_class, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(150, 6)) * 3 + 1
    y = rng.integers(0, n_class, len(X))
    X[:, :2] += y[:, None] * 0.8
    pipe = make_pipeline(StandardScaler(), SVC(kernel=kernel, C=1.0, class_weight="balanced")).fit(X, y)
    return pipe, rng.normal(size=(300, 6)) * 3 + 1


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("n_class", [2, 3, 5])
def test_array_svm_reproduces_sklearn(kernel, n_class):
    pipe, Xt = _fitted(kernel, n_class)
    arr = ArraySVM.from_pipeline(pipe)
    np.testing.assert_array_equal(arr.predict(Xt), pipe.predict(Xt))
    ref = pipe.decision_function(Xt) if n_class > 2 else pipe.decision_function(Xt)[:, None]
    if n_class > 2:
        pipe.steps[-1][1].decision_function_shape = "ovo"
        ref = pipe.decision_function(Xt)
    np.testing.assert_allclose(arr.decision_function(Xt), ref, atol=1e-9)


def test_bundle_round_trip(tmp_path):
    pipe, Xt = _fitted("rbf", 3)
    net = {"layer.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    save_bundle(tmp_path / "b", network_state=net, classifier=ArraySVM.from_pipeline(pipe), config=CONFIG)
    b = load_bundle(tmp_path / "b")
    np.testing.assert_array_equal(b.classifier.predict(Xt), pipe.predict(Xt))
    assert torch.equal(b.network["layer.weight"], net["layer.weight"])
    assert b.class_names == CONFIG["classes"]


def test_tampered_and_foreign_bundles_are_refused(tmp_path):
    pipe, _ = _fitted("linear", 3)
    path = save_bundle(tmp_path / "b", network_state={"w": torch.ones(2)},
                       classifier=ArraySVM.from_pipeline(pipe), config=CONFIG)
    # a pickle dropped in place of the classifier arrays
    (path / "classifier.safetensors").write_bytes(pickle.dumps({"evil": 1}))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(path)
    # ... even with the checksum "fixed" it is never unpickled: safetensors refuses it
    doc = json.loads((path / "bundle.json").read_text())
    import hashlib
    doc["files"]["classifier.safetensors"] = hashlib.sha256((path / "classifier.safetensors").read_bytes()).hexdigest()
    (path / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="unreadable safetensors"):
        load_bundle(path)
    # not a bundle at all
    (tmp_path / "model.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(BundleError, match="not a microfer model bundle"):
        load_bundle(tmp_path / "model.pkl")
    other = tmp_path / "other"
    other.mkdir()
    (other / "bundle.json").write_text('{"format": "something-else"}')
    with pytest.raises(BundleError, match="format marker"):
        load_bundle(other)
