"""Model bundles: everything `predict` needs, as safetensors + JSON, validated on load.

A bundle is a directory:

    bundle.json              format marker, versions, settings, class names, file hashes
    network.safetensors      the feature extractor's weights (MobileViT with its MV2 block)
    classifier.safetensors   scaler + SVM as plain arrays (support vectors, dual coefficients...)

No pickle anywhere: the SVM is stored as the arrays of its decision function and
evaluated by `ArraySVM`, which reproduces scikit-learn's SVC (one-vs-one) exactly for the
kernels microfer fits (linear, rbf). Loading checks the format marker, the version and
the SHA-256 of every file, so a tampered or foreign bundle is refused, not executed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from microfer._io import atomic_path, write_json
from microfer.errors import BundleError

FORMAT = "microfer-bundle"
FORMAT_VERSION = 1
FILES = ("network.safetensors", "classifier.safetensors")
SUPPORTED_KERNELS = ("linear", "rbf")


class ArraySVM:
    """A fitted StandardScaler + SVC pipeline, rebuilt from plain arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], kernel: str, gamma: float):
        if kernel not in SUPPORTED_KERNELS:
            raise BundleError(f"unsupported SVM kernel {kernel!r} (expected one of {SUPPORTED_KERNELS})")
        self.kernel, self.gamma = kernel, float(gamma)
        self.mean = arrays["scaler_mean"].astype(np.float64)
        self.scale = arrays["scaler_scale"].astype(np.float64)
        self.support_vectors = arrays["support_vectors"].astype(np.float64)
        self.dual_coef = arrays["dual_coef"].astype(np.float64)
        self.intercept = arrays["intercept"].astype(np.float64)
        self.n_support = arrays["n_support"].astype(np.int64)
        self.classes = arrays["classes"].astype(np.int64)

    @classmethod
    def from_pipeline(cls, pipeline) -> "ArraySVM":
        """From a fitted sklearn Pipeline whose steps are a StandardScaler then an SVC."""
        scaler, svc = pipeline.steps[0][1], pipeline.steps[-1][1]
        arrays = {
            "scaler_mean": np.asarray(scaler.mean_ if scaler.with_mean else np.zeros(scaler.n_features_in_)),
            "scaler_scale": np.asarray(scaler.scale_ if scaler.with_std else np.ones(scaler.n_features_in_)),
            "support_vectors": np.asarray(svc.support_vectors_),
            "dual_coef": np.asarray(svc.dual_coef_),
            "intercept": np.asarray(svc.intercept_),
            "n_support": np.asarray(svc.n_support_),
            "classes": np.asarray(svc.classes_),
        }
        return cls(arrays, svc.kernel, getattr(svc, "_gamma", 0.0))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"scaler_mean": self.mean, "scaler_scale": self.scale,
                "support_vectors": self.support_vectors, "dual_coef": self.dual_coef,
                "intercept": self.intercept, "n_support": self.n_support, "classes": self.classes}

    def _kernel(self, X: np.ndarray) -> np.ndarray:
        sv = self.support_vectors
        if self.kernel == "linear":
            return X @ sv.T
        sq = (X**2).sum(1)[:, None] + (sv**2).sum(1)[None, :] - 2 * X @ sv.T
        return np.exp(-self.gamma * np.maximum(sq, 0))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """One-vs-one decision values, (n, n_pairs), sklearn's sign convention."""
        X = (np.asarray(X, dtype=np.float64) - self.mean) / self.scale
        K = self._kernel(X)
        start = np.concatenate([[0], np.cumsum(self.n_support)])
        n_class, out, p = len(self.classes), [], 0
        for i in range(n_class):
            for j in range(i + 1, n_class):
                si, sj = slice(start[i], start[i + 1]), slice(start[j], start[j + 1])
                out.append(K[:, si] @ self.dual_coef[j - 1, si] + K[:, sj] @ self.dual_coef[i, sj] + self.intercept[p])
                p += 1
        return np.stack(out, axis=1)

    def class_scores(self, X: np.ndarray) -> np.ndarray:
        """Per-class scores (n, n_class): one-vs-one votes plus a bounded confidence tie-break.

        These are decision scores, not calibrated probabilities. Their argmax equals
        `predict` except on a vote tie, which libsvm (and so `predict`) gives to the first class.
        """
        dec = self.decision_function(X)
        n_class = len(self.classes)
        if n_class == 2:  # sklearn flips the binary sign: positive means classes[1]
            return np.stack([-dec[:, 0], dec[:, 0]], axis=1)
        votes = np.zeros((len(dec), n_class))
        conf = np.zeros((len(dec), n_class))
        p = 0
        for i in range(n_class):
            for j in range(i + 1, n_class):
                votes[:, i] += dec[:, p] > 0
                votes[:, j] += dec[:, p] <= 0
                conf[:, i] += dec[:, p]
                conf[:, j] -= dec[:, p]
                p += 1
        # same monotone squashing as libsvm/sklearn ovr: never overturns a vote difference
        return votes + conf / (3 * (np.abs(conf) + 1))

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.class_scores(X)
        if len(self.classes) == 2:
            return self.classes[(scores[:, 1] > 0).astype(int)]
        return self.classes[np.argmax(np.floor(scores + 0.5), axis=1)]  # votes only, first max wins


@dataclass
class Bundle:
    path: Path
    config: dict
    network: dict  # name -> torch.Tensor
    classifier: ArraySVM

    @property
    def class_names(self) -> list[str]:
        return list(self.config["classes"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(path, *, network_state: dict, classifier: ArraySVM, config: dict) -> Path:
    """Write a bundle directory atomically file by file, bundle.json last (its presence = complete)."""
    from safetensors.torch import save_file as save_torch
    from safetensors.numpy import save_file as save_numpy

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / "bundle.json"
    if marker.exists():
        marker.unlink()  # an interrupted overwrite must not look complete
    state = {k: v.detach().contiguous().cpu() for k, v in network_state.items()}
    with atomic_path(path / "network.safetensors") as tmp:
        save_torch(state, str(tmp))
    with atomic_path(path / "classifier.safetensors") as tmp:
        save_numpy({k: np.ascontiguousarray(v) for k, v in classifier.arrays().items()}, str(tmp))
    doc = dict(config)
    doc.update({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "svm": {**doc.get("svm", {}), "kernel": classifier.kernel, "gamma": classifier.gamma},
        "files": {name: _sha256(path / name) for name in FILES},
    })
    write_json(marker, doc)
    return path


def load_bundle(path) -> Bundle:
    """Load and validate a bundle; anything else is refused with a BundleError naming the problem."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file as load_torch

    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a microfer model bundle (expected a directory with bundle.json)")
    marker = path / "bundle.json"
    try:
        config = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: not a microfer model bundle (bundle.json is missing)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{marker}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise BundleError(f"{marker}: not a microfer model bundle (format marker missing)")
    if config.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{marker}: bundle format version {config.get('format_version')} "
                          f"is not supported (this microfer reads version {FORMAT_VERSION})")
    for key in ("classes", "prepare", "features", "svm", "files"):
        if key not in config:
            raise BundleError(f"{marker}: required entry {key!r} is missing")
    for name in FILES:
        f = path / name
        if not f.is_file():
            raise BundleError(f"{f}: missing from the bundle")
        if _sha256(f) != config["files"].get(name):
            raise BundleError(f"{f}: checksum does not match bundle.json (modified or foreign file)")
    try:
        network = load_torch(str(path / "network.safetensors"))
        arrays = load_numpy(str(path / "classifier.safetensors"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable safetensors file ({exc})") from None
    missing = {"scaler_mean", "scaler_scale", "support_vectors", "dual_coef", "intercept",
               "n_support", "classes"} - set(arrays)
    if missing:
        raise BundleError(f"{path / 'classifier.safetensors'}: arrays missing: {sorted(missing)}")
    classifier = ArraySVM(arrays, config["svm"].get("kernel", ""), config["svm"].get("gamma", 0.0))
    if len(config["classes"]) < int(classifier.classes.max()) + 1:
        raise BundleError(f"{marker}: {len(config['classes'])} class names for class index {int(classifier.classes.max())}")
    return Bundle(path=path, config=config, network=network, classifier=classifier)
