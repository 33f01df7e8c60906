"""The schema of a bundle: bundle.json's entries and the classifier and OOD arrays, checked
after the integrity hash and before anything is used; one BundleError naming the entry."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path

import numpy as np

from microfer.errors import BundleError
from microfer.learn.input_ood import ARRAYS as INPUT_OOD_ARRAYS
from microfer.learn.input_ood import METHOD as INPUT_OOD_METHOD
from microfer.learn.input_ood import STATS as INPUT_OOD_STATS
from microfer.learn.input_ood import VERSION as INPUT_OOD_VERSION
from microfer.learn.ood import ARRAYS as OOD_ARRAYS
from microfer.learn.ood import METHOD as OOD_METHOD
from microfer.learn.svm_arrays import ARRAYS, SUPPORTED_KERNELS

FILES = ("network.safetensors", "classifier.safetensors")
# optional: a network part exported to ONNX (`features.FeatureModel.onnx_names`)
ONNX_FILE = re.compile(r"network\.(part\d+\.)?onnx")
OOD_FILE = "ood.safetensors"  # optional: the OOD score's arrays (`microfer.learn.ood`)
# optional (format version 3): the calibrator's arrays (`microfer.learn.calibrate`)
CALIBRATOR_FILE = "calibrator.safetensors"
CALIBRATOR_ARRAYS = ("weight", "bias")
# optional: the input check of bundles trained on circulated inputs (`microfer.learn.input_ood`)
INPUT_OOD_FILE = "input_ood.safetensors"
# file -> its bundle.json entry
OPTIONAL_FILES = {OOD_FILE: "ood", CALIBRATOR_FILE: "calibration", INPUT_OOD_FILE: "input_ood"}
HEX64 = re.compile(r"[0-9a-f]{64}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _encodable(text: str) -> bool:
    """Valid text that prints as itself: no control characters (a class name with terminal
    escapes would rewrite the user's screen when predict prints it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def check_config(config: dict, marker: Path) -> None:
    """The schema of bundle.json (after the integrity check): one BundleError naming the entry."""

    def bad(field: str, expected: str, value) -> BundleError:
        shown = json.dumps(value, default=str)  # ASCII: always printable
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return BundleError(f"{marker}: entry {field!r} must be {expected}, found {shown}")

    for key in ("classes", "prepare", "features", "svm", "files"):
        if key not in config:
            raise BundleError(f"{marker}: required entry {key!r} is missing")
    _check_classes(config["classes"], bad)
    _check_files(config["files"], bad)
    _check_svm(config["svm"], bad)
    for key in ("features", "prepare"):
        if not isinstance(config[key], dict):
            raise bad(key, "a mapping of settings", config[key])
    for name, entry in OPTIONAL_FILES.items():
        if (entry in config) != (name in config["files"]):
            raise bad(entry, f"present exactly when {name} is listed in 'files'", config.get(entry))
    if "ood" in config:
        _check_ood(config["ood"], bad)
    if "calibration" in config:
        if config.get("format_version") == 2:
            raise bad("calibration", "absent from a format-version-2 bundle", config["calibration"])
        if not isinstance(config["calibration"], dict):
            raise bad(
                "calibration", "a mapping with the calibrator's method", config["calibration"]
            )
    if "input_ood" in config:
        _check_input_ood(config["input_ood"], bad)


def _check_classes(classes, bad) -> None:
    if not isinstance(classes, list) or not classes:
        raise bad("classes", "a non-empty list of class names", classes)
    for i, c in enumerate(classes):
        if not isinstance(c, str) or not c.strip() or not _encodable(c):
            raise bad(f"classes[{i}]", "a non-empty string of printable text", c)
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise bad("classes", "a list of unique names", dupes)


def _check_files(files, bad) -> None:
    if not isinstance(files, dict):
        raise bad("files", f"a mapping file name -> sha256 for {list(FILES)}", files)
    if not set(FILES) <= set(files) or any(
        n not in (*FILES, *OPTIONAL_FILES) and not ONNX_FILE.fullmatch(n) for n in files
    ):
        raise bad(
            "files",
            f"a mapping for {list(FILES)} and optional network[.partN].onnx, "
            f"{' and '.join(OPTIONAL_FILES)} files",
            sorted(files),
        )
    for name in files:
        if not isinstance(files[name], str) or not HEX64.fullmatch(files[name]):
            raise bad(f"files.{name}", "a sha256 (64 lowercase hex digits)", files[name])


def _check_svm(svm, bad) -> None:
    if not isinstance(svm, dict):
        raise bad("svm", "a mapping with the SVM's kernel and gamma", svm)
    if svm.get("kernel") not in SUPPORTED_KERNELS:
        raise bad("svm.kernel", f"one of {list(SUPPORTED_KERNELS)}", svm.get("kernel"))
    if svm["kernel"] == "rbf":
        if not _is_number(svm.get("gamma")) or svm["gamma"] <= 0:
            raise bad("svm.gamma", "a positive number for the rbf kernel", svm.get("gamma"))
    elif "gamma" in svm and (
        not isinstance(svm["gamma"], (int, float)) or isinstance(svm["gamma"], bool)
    ):
        raise bad("svm.gamma", "a number", svm["gamma"])


def _check_ood(ood, bad) -> None:
    if not isinstance(ood, dict) or ood.get("method") != OOD_METHOD:
        raise bad("ood", f"a mapping with method {OOD_METHOD!r}", ood)
    for key in ("threshold", "percentile", "floor"):
        if not _is_number(ood.get(key)) or (key.endswith("floor") and ood[key] <= 0):
            raise bad(
                f"ood.{key}",
                "a positive number" if key.endswith("floor") else "a number",
                ood.get(key),
            )


def _check_input_ood(entry, bad) -> None:
    if not isinstance(entry, dict) or entry.get("method") != INPUT_OOD_METHOD:
        raise bad("input_ood", f"a mapping with method {INPUT_OOD_METHOD!r}", entry)
    if entry.get("version") != INPUT_OOD_VERSION or entry.get("statistics") != list(
        INPUT_OOD_STATS
    ):
        raise bad(
            "input_ood.version",
            f"{INPUT_OOD_VERSION} with this microfer's statistics (retrain the bundle)",
            entry.get("version"),
        )
    sha = entry.get("teacher_sha256", "")
    if not isinstance(sha, str) or (sha and not HEX64.fullmatch(sha)):
        raise bad("input_ood.teacher_sha256", "a sha256 (64 lowercase hex digits)", sha)
    for key in ("threshold", "percentile", "floor"):
        if not _is_number(entry.get(key)) or (key == "floor" and entry[key] <= 0):
            raise bad(
                f"input_ood.{key}",
                "a positive number" if key == "floor" else "a number",
                entry.get(key),
            )


def check_input_ood_arrays(arrays: dict, source: Path) -> None:
    """The input check's arrays fit each other and the statistics it reads."""
    missing = set(INPUT_OOD_ARRAYS) - set(arrays)
    if missing:
        raise BundleError(f"{source}: arrays missing: {sorted(missing)}")
    for name in INPUT_OOD_ARRAYS:
        if arrays[name].dtype.kind != "f" or not np.isfinite(arrays[name]).all():
            raise BundleError(f"{source}: array {name!r} must hold finite floats")
    d = len(INPUT_OOD_STATS)
    r = arrays["basis"].shape[0] if arrays["basis"].ndim == 2 else -1
    expected = {"center": (d,), "scale": (d,), "mean": (d,), "basis": (r, d), "eigvals": (r,)}
    for name, shape in expected.items():
        if arrays[name].shape != shape or min(shape) < 1:
            raise BundleError(
                f"{source}: array {name!r} has shape {arrays[name].shape}, expected {shape}"
            )
    if (arrays["eigvals"] <= 0).any() or (arrays["scale"] == 0).any():
        raise BundleError(f"{source}: arrays 'eigvals' and 'scale' must be positive")


def check_arrays(arrays: dict, n_names: int, source: Path) -> None:
    """Shapes and types of the classifier arrays agree with each other and with `classes`."""
    missing = set(ARRAYS) - set(arrays)
    if missing:
        raise BundleError(f"{source}: arrays missing: {sorted(missing)}")
    for name in ARRAYS:
        a = arrays[name]
        kinds = "iu" if name in ("n_support", "classes") else "fiu"
        if a.dtype.kind not in kinds:
            raise BundleError(
                f"{source}: array {name!r} has dtype {a.dtype}, expected "
                f"{'integers' if kinds == 'iu' else 'numbers'}"
            )
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise BundleError(f"{source}: array {name!r} holds NaN or infinite values")

    def shape(name, expected):
        if arrays[name].shape != tuple(expected):
            raise BundleError(
                f"{source}: array {name!r} has shape {arrays[name].shape}, expected {tuple(expected)}"
            )

    sv, cls = arrays["support_vectors"], arrays["classes"]
    if sv.ndim != 2 or sv.shape[0] < 1 or sv.shape[1] < 1:
        raise BundleError(
            f"{source}: array 'support_vectors' has shape {sv.shape}, expected (n_sv, n_features)"
        )
    n_sv, dim = sv.shape
    if cls.ndim != 1 or len(cls) < 2:
        raise BundleError(
            f"{source}: array 'classes' has shape {cls.shape}, expected at least 2 class indices"
        )
    k = len(cls)
    if (np.diff(cls) <= 0).any() or cls.min() < 0:
        raise BundleError(
            f"{source}: class indices {cls.tolist()} are not increasing non-negative integers"
        )
    if cls.max() >= n_names:
        raise BundleError(
            f"{source.parent / 'bundle.json'}: entry 'classes' has {n_names} name(s), too few for "
            f"the class indices {cls.tolist()} of {source.name}"
        )
    shape("n_support", (k,))
    if (arrays["n_support"] < 0).any() or int(arrays["n_support"].sum()) != n_sv:
        raise BundleError(
            f"{source}: n_support {arrays['n_support'].tolist()} does not add up to "
            f"the {n_sv} support vectors"
        )
    shape("dual_coef", (k - 1, n_sv))
    shape("intercept", (k * (k - 1) // 2,))
    shape("scaler_mean", (dim,))
    shape("scaler_scale", (dim,))
    if (arrays["scaler_scale"] == 0).any():
        raise BundleError(f"{source}: array 'scaler_scale' has zeros (would divide by zero)")


def check_ood_arrays(arrays: dict, dim: int, n_names: int, source: Path) -> None:
    """The OOD arrays fit each other and the classifier's `dim` feature columns."""
    missing = set(OOD_ARRAYS) - set(arrays)
    if missing:
        raise BundleError(f"{source}: arrays missing: {sorted(missing)}")
    for name in OOD_ARRAYS:
        a = arrays[name]
        if a.dtype.kind != "f" or not np.isfinite(a).all():
            raise BundleError(f"{source}: array {name!r} must hold finite floats")
    expected = {"center": (dim,), "scale": (dim,), "background_mean": (dim,)}
    for prefix in ("class", "background"):
        r = arrays[f"{prefix}_basis"].shape[0] if arrays[f"{prefix}_basis"].ndim == 2 else -1
        expected.update({f"{prefix}_basis": (r, dim), f"{prefix}_eigvals": (r,)})
        if (arrays[f"{prefix}_eigvals"] <= 0).any():
            raise BundleError(f"{source}: array '{prefix}_eigvals' must be positive")
    k = arrays["class_means"].shape[0] if arrays["class_means"].ndim == 2 else -1
    expected["class_means"] = (k, dim)
    for name, shape in expected.items():
        if arrays[name].shape != shape or min(shape) < 1 or k > n_names:
            raise BundleError(
                f"{source}: array {name!r} has shape {arrays[name].shape}, expected {shape} "
                f"({dim} feature columns, at most {n_names} classes)"
            )
    if (arrays["scale"] == 0).any():
        raise BundleError(f"{source}: array 'scale' has zeros (would divide by zero)")


def check_calibrator_arrays(arrays: dict, n_names: int, source: Path) -> None:
    """The calibrator's arrays: a finite K x K weight and K bias, K = the bundle's classes."""
    missing = set(CALIBRATOR_ARRAYS) - set(arrays)
    if missing:
        raise BundleError(f"{source}: arrays missing: {sorted(missing)}")
    for name, shape in (("weight", (n_names, n_names)), ("bias", (n_names,))):
        a = arrays[name]
        if a.dtype.kind != "f" or not np.isfinite(a).all():
            raise BundleError(f"{source}: array {name!r} must hold finite floats")
        if a.shape != shape:
            raise BundleError(
                f"{source}: array {name!r} has shape {a.shape}, expected {shape} "
                f"({n_names} classes)"
            )
