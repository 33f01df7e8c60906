import json
import pickle

import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from microfer.errors import BundleError
from microfer.learn.bundle import (
    FILES,
    ArraySVM,
    file_sha256,
    integrity_digest,
    load_bundle,
    save_bundle,
)

CONFIG = {
    "classes": ["negative", "positive", "surprise", "x", "y"],
    "prepare": {},
    "features": {},
    "svm": {},
}


def _reseal(path):
    """Rewrite bundle.json's integrity hash for its current content (what a deliberate attacker can do)."""
    doc = json.loads((path / "bundle.json").read_text())
    doc["integrity"] = {
        "algorithm": "sha256",
        "content": integrity_digest(doc, {n: file_sha256(path / n) for n in FILES}),
    }
    (path / "bundle.json").write_text(json.dumps(doc))


def _fitted(kernel, n_class, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(150, 6)) * 3 + 1
    y = rng.integers(0, n_class, len(X))
    X[:, :2] += y[:, None] * 0.8
    pipe = make_pipeline(StandardScaler(), SVC(kernel=kernel, C=1.0, class_weight="balanced")).fit(
        X, y
    )
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
    save_bundle(
        tmp_path / "b", network_state=net, classifier=ArraySVM.from_pipeline(pipe), config=CONFIG
    )
    b = load_bundle(tmp_path / "b")
    np.testing.assert_array_equal(b.classifier.predict(Xt), pipe.predict(Xt))
    np.testing.assert_array_equal(b.network["layer.weight"], net["layer.weight"].numpy())
    assert b.class_names == CONFIG["classes"]


def test_a_failed_overwrite_leaves_the_old_bundle_and_a_foreign_folder_is_refused(
    tmp_path, monkeypatch
):
    import microfer.learn.bundle as bundle_module

    pipe, Xt = _fitted("rbf", 3)
    net = {"layer.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    kw = {"network_state": net, "classifier": ArraySVM.from_pipeline(pipe), "config": CONFIG}
    save_bundle(tmp_path / "b", **kw)
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module, "write_json", disk_full)  # bundle.json is written last
    with pytest.raises(OSError, match="No space"):
        save_bundle(tmp_path / "b", **kw)
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary folder left behind
    monkeypatch.undo()
    np.testing.assert_array_equal(
        load_bundle(tmp_path / "b").classifier.predict(Xt), pipe.predict(Xt)
    )

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("months of work")
    with pytest.raises(FileExistsError, match="not an output to replace"):
        save_bundle(notes, **kw)
    assert (notes / "thesis.tex").read_text() == "months of work"


def test_tampered_and_foreign_bundles_are_refused(tmp_path):
    pipe, _ = _fitted("linear", 3)
    path = save_bundle(
        tmp_path / "b",
        network_state={"w": torch.ones(2)},
        classifier=ArraySVM.from_pipeline(pipe),
        config=CONFIG,
    )
    # a pickle dropped in place of the classifier arrays
    (path / "classifier.safetensors").write_bytes(pickle.dumps({"evil": 1}))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(path)
    # ... even with the checksum "fixed" it is never unpickled: safetensors refuses it
    doc = json.loads((path / "bundle.json").read_text())
    import hashlib

    doc["files"]["classifier.safetensors"] = hashlib.sha256(
        (path / "classifier.safetensors").read_bytes()
    ).hexdigest()
    (path / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="integrity check failed"):
        load_bundle(path)
    _reseal(path)  # ... and with the integrity hash rewritten too
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


# --- integrity over every file (bundle.json included) and schema validation ---------------


def _small_bundle(tmp_path, name="b", kernel="rbf"):
    pipe, Xt = _fitted(kernel, 3)
    path = save_bundle(
        tmp_path / name,
        network_state={"w": torch.ones(2)},
        classifier=ArraySVM.from_pipeline(pipe),
        config={**CONFIG, "classes": CONFIG["classes"][:3]},
    )
    return path, pipe, Xt


def _edit(path, change, reseal=False):
    doc = json.loads((path / "bundle.json").read_text())
    change(doc)
    (path / "bundle.json").write_text(json.dumps(doc, indent=2))
    if reseal:
        _reseal(path)


def _swap(doc):
    doc["classes"][0], doc["classes"][1] = doc["classes"][1], doc["classes"][0]


def _set(*keys, value):
    def change(doc):
        d = doc
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return change


def _delete(key):
    return lambda doc: doc.pop(key)


# what the issue reported, and more: every edit of bundle.json is caught by the hash
EDITS = {
    "swapped class names": _swap,
    "renamed class": _set("classes", 2, value="happiness"),
    "classes as a string": _set("classes", value="negative"),
    "changed gamma": lambda doc: doc["svm"].update(gamma=doc["svm"]["gamma"] * 2),
    "files as a list": lambda doc: doc.update(files=list(doc["files"].values())),
    "svm null": _set("svm", value=None),
    "deleted field": _delete("features"),
    "added field": _set("note", value="harmless?"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_any_edit_of_bundle_json_is_refused(tmp_path, edit):
    path, _, _ = _small_bundle(tmp_path)
    _edit(path, EDITS[edit])
    with pytest.raises(BundleError) as exc:
        load_bundle(path)
    msg = str(exc.value)
    assert (
        str(path) in msg and "integrity check failed" in msg and "bundle.json was modified" in msg
    )


# with the hash rewritten too (the check is not a signature), the schema still refuses
# malformed content with one BundleError naming bundle.json and the entry
SCHEMA = {
    "classes as a string": (_set("classes", value="negative"), "'classes'"),
    "empty classes": (_set("classes", value=[]), "'classes'"),
    "class name not a string": (_set("classes", 1, value=7), r"'classes\[1\]'"),
    "class name a lone surrogate": (_set("classes", 1, value="\ud800"), r"'classes\[1\]'"),
    "class name with a terminal escape": (
        _set("classes", 1, value="happy\x1b[2J"),
        r"'classes\[1\]' must be a non-empty string of printable text",
    ),
    "duplicate class names": (_set("classes", 1, value="negative"), "unique"),
    "too few class names": (_set("classes", value=["a", "b"]), "'classes' has 2 name"),
    "files as a list": (lambda doc: doc.update(files=list(doc["files"].values())), "'files'"),
    "files with an extra name": (_set("files", "extra.bin", value="0" * 64), "'files'"),
    "files hash not hex": (
        _set("files", "network.safetensors", value="abc"),
        "files.network.safetensors",
    ),
    "svm null": (_set("svm", value=None), "'svm'"),
    "unsupported kernel": (_set("svm", "kernel", value="poly"), "svm.kernel"),
    "gamma as a string": (_set("svm", "gamma", value="0.1"), "svm.gamma"),
    "gamma missing": (lambda doc: doc["svm"].pop("gamma"), "svm.gamma"),
    "features a list": (_set("features", value=[]), "'features'"),
    "prepare null": (_set("prepare", value=None), "'prepare'"),
    "deleted field": (_delete("prepare"), "required entry 'prepare'"),
    "deleted files": (_delete("files"), "required entry 'files'"),
}


@pytest.mark.parametrize("case", list(SCHEMA))
def test_malformed_bundle_json_is_refused_even_with_a_rewritten_hash(tmp_path, case):
    path, _, _ = _small_bundle(tmp_path)
    change, field = SCHEMA[case]
    _edit(path, change, reseal=True)
    with pytest.raises(BundleError, match=field) as exc:
        load_bundle(path)
    assert str(path / "bundle.json") in str(exc.value)


def test_modified_weights_file_is_refused(tmp_path):
    path, _, _ = _small_bundle(tmp_path)
    f = path / "network.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError) as exc:
        load_bundle(path)
    msg = str(exc.value)
    assert (
        str(path) in msg
        and "integrity check failed" in msg
        and "network.safetensors checksum" in msg
    )


def test_missing_or_malformed_integrity_entry_is_refused(tmp_path):
    path, _, _ = _small_bundle(tmp_path)
    _edit(path, _set("integrity", "content", value="0" * 64))
    with pytest.raises(BundleError, match="integrity check failed"):
        load_bundle(path)
    _edit(path, _delete("integrity"))
    with pytest.raises(BundleError, match="cannot be verified") as exc:
        load_bundle(path)
    assert str(path) in str(exc.value)


def test_version_1_bundle_is_refused_with_a_retrain_hint(tmp_path):
    path, _, _ = _small_bundle(tmp_path)
    _edit(path, lambda doc: (doc.pop("integrity"), doc.update(format_version=1)))
    with pytest.raises(BundleError, match="version 1.*retrain") as exc:
        load_bundle(path)
    assert str(path) in str(exc.value)
    _edit(path, _set("format_version", value="2"))
    with pytest.raises(BundleError, match='version "2" is not supported'):
        load_bundle(path)


def _rewrite_arrays(path, change):
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(path / "classifier.safetensors"))
    change(arrays)
    save_file(arrays, str(path / "classifier.safetensors"))
    _edit(
        path,
        lambda doc: doc["files"].update(
            {"classifier.safetensors": file_sha256(path / "classifier.safetensors")}
        ),
        reseal=True,
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(dual_coef=a["dual_coef"][:, 1:]), "dual_coef"),
        (lambda a: a.update(n_support=a["n_support"] + 1), "n_support"),
        (lambda a: a.update(intercept=a["intercept"][:1]), "intercept"),
        (lambda a: a.update(scaler_mean=a["scaler_mean"][:2]), "scaler_mean"),
        (lambda a: a.update(classes=a["classes"][::-1].copy()), "class indices"),
        (lambda a: a.update(classes=a["classes"].astype(np.float32)), "'classes' has dtype"),
        (lambda a: a.pop("intercept"), "arrays missing"),
    ],
)
def test_classifier_arrays_must_agree_with_classes_and_each_other(tmp_path, change, message):
    path, _, _ = _small_bundle(tmp_path)
    _rewrite_arrays(path, change)
    with pytest.raises(BundleError, match=message) as exc:
        load_bundle(path)
    assert str(path) in str(exc.value)


def test_untouched_bundle_loads_and_predicts_like_sklearn(tmp_path):
    for kernel in ("linear", "rbf"):
        path, pipe, Xt = _small_bundle(tmp_path, name=kernel, kernel=kernel)
        doc = json.loads((path / "bundle.json").read_text())
        assert doc["format_version"] == 3 and doc["integrity"]["algorithm"] == "sha256"
        b = load_bundle(path)
        np.testing.assert_array_equal(b.classifier.predict(Xt), pipe.predict(Xt))
        assert b.class_names == CONFIG["classes"][:3]
        # re-saving a loaded config (integrity entry included) gives a valid bundle again
        save_bundle(
            tmp_path / f"{kernel}2",
            network_state=b.network,
            classifier=b.classifier,
            config=b.config,
        )
        assert load_bundle(tmp_path / f"{kernel}2").class_names == b.class_names


def _cli(args, monkeypatch, capsys):
    import sys

    from microfer.cli import main

    monkeypatch.setattr(sys, "argv", ["microfer", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "edit",
    [
        "swapped class names",
        "classes as a string",
        "files as a list",
        "svm null",
        "changed gamma",
        "v1",
        "weights",
    ],
)
def test_cli_predict_refuses_modified_bundles_in_one_line(tmp_path, edit, monkeypatch, capsys):
    path, _, _ = _small_bundle(tmp_path)
    if edit == "v1":
        _edit(path, lambda doc: (doc.pop("integrity"), doc.update(format_version=1)))
    elif edit == "weights":
        (path / "classifier.safetensors").write_bytes(pickle.dumps({"evil": 1}))
    else:
        _edit(path, EDITS[edit])
    code, err = _cli(
        ["predict", str(tmp_path / "clip.mp4"), "--model", str(path)], monkeypatch, capsys
    )
    assert code == 2 and len(err) == 1 and str(path) in err[0] and err[0].startswith("error: ")
    assert "Traceback" not in err[0]
