"""Model bundles: everything `predict` needs, as safetensors + JSON, validated on load.

A bundle is a directory:

    bundle.json              format marker, versions, settings, class names, file hashes,
                             integrity hash over all of it and the files
    network.safetensors      the feature extractor's weights (up to the layer it is read at)
    classifier.safetensors   scaler + SVM as plain arrays (support vectors, dual coefficients...)
    network[.partN.]onnx     (network feature sets) the same network exported to ONNX, so that
                             `predict` runs it in onnxruntime without importing torch or timm
    ood.safetensors          (optional) the out-of-distribution score's arrays
                             (`microfer.learn.ood.RelativeMahalanobis`); its scalars and threshold
                             are bundle.json's "ood" entry. Bundles without it load (no OOD score).

No pickle anywhere: the SVM is stored as the arrays of its decision function and
evaluated by `ArraySVM`, which reproduces scikit-learn's SVC (one-vs-one) exactly for the
kernels microfer fits (linear, rbf).

Integrity (format version 2): bundle.json carries
`"integrity": {"algorithm": "sha256", "content": HEX}`, the SHA-256 of the canonical JSON of
every other entry of bundle.json (`json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`) followed by one `NAME:SHA256` line per weights file, hashed from the
files on disk. `load_bundle` checks the format marker and version, then this hash, then the
schema of bundle.json and the shapes of the classifier arrays, all BEFORE anything is used;
any failure is a BundleError naming the bundle and the entry. This detects accidental edits
and naive tampering; it is NOT a signature: whoever rewrites the hash too is not stopped.
Loading never executes code either way (safetensors + JSON, no pickle).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from microfer.errors import BundleError
from microfer.io import atomic_dir, file_sha256, write_json
from microfer.learn.ood import ARRAYS as OOD_ARRAYS
from microfer.learn.ood import METHOD as OOD_METHOD
from microfer.learn.ood import RelativeMahalanobis

FORMAT = "microfer-bundle"
FORMAT_VERSION = 2  # 2: adds the "integrity" entry covering bundle.json and every file
FILES = ("network.safetensors", "classifier.safetensors")
# optional: a network part exported to ONNX (`features.FeatureModel.onnx_names`)
ONNX_FILE = re.compile(r"network\.(part\d+\.)?onnx")
OOD_FILE = "ood.safetensors"  # optional: the OOD score's arrays (`microfer.learn.ood`)
SUPPORTED_KERNELS = ("linear", "rbf")
ARRAYS = (
    "scaler_mean",
    "scaler_scale",
    "support_vectors",
    "dual_coef",
    "intercept",
    "n_support",
    "classes",
)
INTEGRITY_KEY = "integrity"
IMAGE_INPUT = "image"  # bundle.json "input" of image bundles (face images, not clips)
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ArraySVM:
    """A fitted StandardScaler + SVC pipeline, rebuilt from plain arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], kernel: str, gamma: float):
        if kernel not in SUPPORTED_KERNELS:
            raise BundleError(
                f"unsupported SVM kernel {kernel!r} (expected one of {SUPPORTED_KERNELS})"
            )
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
            "scaler_mean": np.asarray(
                scaler.mean_ if scaler.with_mean else np.zeros(scaler.n_features_in_)
            ),
            "scaler_scale": np.asarray(
                scaler.scale_ if scaler.with_std else np.ones(scaler.n_features_in_)
            ),
            "support_vectors": np.asarray(svc.support_vectors_),
            "dual_coef": np.asarray(svc.dual_coef_),
            "intercept": np.asarray(svc.intercept_),
            "n_support": np.asarray(svc.n_support_),
            "classes": np.asarray(svc.classes_),
        }
        return cls(arrays, svc.kernel, getattr(svc, "_gamma", 0.0))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "scaler_mean": self.mean,
            "scaler_scale": self.scale,
            "support_vectors": self.support_vectors,
            "dual_coef": self.dual_coef,
            "intercept": self.intercept,
            "n_support": self.n_support,
            "classes": self.classes,
        }

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
                out.append(
                    K[:, si] @ self.dual_coef[j - 1, si]
                    + K[:, sj] @ self.dual_coef[i, sj]
                    + self.intercept[p]
                )
                p += 1
        return np.stack(out, axis=1)

    def class_scores(self, X: np.ndarray) -> np.ndarray:
        """Per-class scores (n, n_class): one-vs-one votes plus a bounded confidence tie-break.

        These are decision scores, not calibrated probabilities. Their argmax equals
        `predict` except on a vote tie, which libsvm (and so `predict`) gives to the first class.
        """
        votes, conf = self._votes_and_confidence(X)
        if votes is None:
            return conf
        # same monotone squashing as libsvm/sklearn ovr: never overturns a vote difference
        return votes + conf / (3 * (np.abs(conf) + 1))

    def confidence(self, X: np.ndarray) -> np.ndarray:
        """Per-class sums of the one-vs-one decision values for each class (n, n_class):
        continuous, unlike the votes, so small changes of the input show (activation maps)."""
        return self._votes_and_confidence(X)[1]

    def _votes_and_confidence(self, X: np.ndarray):
        dec = self.decision_function(X)
        n_class = len(self.classes)
        if n_class == 2:  # sklearn flips the binary sign: positive means classes[1]
            return None, np.stack([-dec[:, 0], dec[:, 0]], axis=1)
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
        return votes, conf

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.class_scores(X)
        if len(self.classes) == 2:
            return self.classes[(scores[:, 1] > 0).astype(int)]
        return self.classes[np.argmax(np.floor(scores + 0.5), axis=1)]  # votes only, first max wins


@dataclass
class Bundle:
    path: Path
    config: dict
    # name -> numpy array: loading a bundle never imports torch, so a bundle whose features
    # need no network (the motion descriptors) predicts without it
    network: dict
    classifier: ArraySVM
    onnx: dict = field(default_factory=dict)  # ONNX file name -> verified path in the bundle
    ood: Optional[RelativeMahalanobis] = None  # None: a bundle trained before OOD scores

    @property
    def class_names(self) -> list[str]:
        return list(self.config["classes"])


_sha256 = file_sha256


def _canonical(doc) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def integrity_digest(doc: dict, file_hashes: dict[str, str]) -> str:
    """SHA-256 over bundle.json's content (all entries but "integrity") and the files' hashes."""
    h = hashlib.sha256(_canonical({k: v for k, v in doc.items() if k != INTEGRITY_KEY}))
    for name in sorted(file_hashes):
        h.update(f"\n{name}:{file_hashes[name]}".encode("utf-8"))
    return h.hexdigest()


def as_array(value) -> np.ndarray:
    """A weight as a numpy array (torch tensors are detached and moved to the CPU first)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def save_bundle(
    path,
    *,
    network_state: dict,
    classifier: ArraySVM,
    config: dict,
    onnx: Optional[dict[str, bytes]] = None,
    ood: Optional[RelativeMahalanobis] = None,
) -> Path:
    """Write a bundle directory atomically: it is built in a temporary sibling and swapped in
    whole, so a failure leaves an older bundle at `path` intact. A non-empty `path` that is not
    a bundle (no bundle.json) is refused.

    `onnx`: {file name: ONNX model bytes} of the network parts (names matching `ONNX_FILE`).
    `ood`: the fitted OOD score, written to `OOD_FILE` with its scalars in bundle.json's "ood".
    """
    final = Path(path)
    with atomic_dir(final, is_ours=lambda p: (p / "bundle.json").is_file()) as tmp:
        _write_bundle_files(tmp, final, network_state, classifier, config, onnx, ood)
    return final


def _write_bundle_files(path: Path, final: Path, network_state, classifier, config, onnx, ood):
    from safetensors.numpy import save_file as save_numpy

    # np.array, not ascontiguousarray: that turns 0-d tensors (BatchNorm counters) into 1-d
    state = {k: np.array(as_array(v), order="C") for k, v in network_state.items()}
    save_numpy(state, str(path / "network.safetensors"))
    arrays = {k: np.ascontiguousarray(v) for k, v in classifier.arrays().items()}
    save_numpy(arrays, str(path / "classifier.safetensors"))
    for name, blob in (onnx or {}).items():
        if not ONNX_FILE.fullmatch(name):
            raise BundleError(
                f"{final}: {name!r} is not a bundle ONNX file name (network[.partN].onnx)"
            )
        (path / name).write_bytes(blob)
    doc = {k: v for k, v in config.items() if k not in (INTEGRITY_KEY, "ood")}
    extra = sorted(onnx or {})
    if ood is not None:
        save_numpy(
            {k: np.ascontiguousarray(v) for k, v in ood.arrays().items()}, str(path / OOD_FILE)
        )
        doc["ood"] = ood.config()
        extra.append(OOD_FILE)
    hashes = {name: _sha256(path / name) for name in (*FILES, *extra)}
    doc.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "svm": {**doc.get("svm", {}), "kernel": classifier.kernel, "gamma": classifier.gamma},
            "files": hashes,
        }
    )
    doc = json.loads(json.dumps(doc, default=str))  # hash exactly what load_bundle will read back
    doc[INTEGRITY_KEY] = {"algorithm": "sha256", "content": integrity_digest(doc, hashes)}
    write_json(path / "bundle.json", doc)


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


def _check_config(config: dict, marker: Path) -> None:
    """The schema of bundle.json (after the integrity check): one BundleError naming the entry."""

    def bad(field: str, expected: str, value) -> BundleError:
        shown = json.dumps(value, default=str)  # ASCII: always printable
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return BundleError(f"{marker}: entry {field!r} must be {expected}, found {shown}")

    for key in ("classes", "prepare", "features", "svm", "files"):
        if key not in config:
            raise BundleError(f"{marker}: required entry {key!r} is missing")
    classes = config["classes"]
    if not isinstance(classes, list) or not classes:
        raise bad("classes", "a non-empty list of class names", classes)
    for i, c in enumerate(classes):
        if not isinstance(c, str) or not c.strip() or not _encodable(c):
            raise bad(f"classes[{i}]", "a non-empty string of printable text", c)
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise bad("classes", "a list of unique names", dupes)
    files = config["files"]
    if not isinstance(files, dict):
        raise bad("files", f"a mapping file name -> sha256 for {list(FILES)}", files)
    if not set(FILES) <= set(files) or any(
        n not in (*FILES, OOD_FILE) and not ONNX_FILE.fullmatch(n) for n in files
    ):
        raise bad(
            "files",
            f"a mapping for {list(FILES)} and optional network[.partN].onnx and {OOD_FILE} files",
            sorted(files),
        )
    for name in files:
        if not isinstance(files[name], str) or not _HEX64.fullmatch(files[name]):
            raise bad(f"files.{name}", "a sha256 (64 lowercase hex digits)", files[name])
    svm = config["svm"]
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
    for key in ("features", "prepare"):
        if not isinstance(config[key], dict):
            raise bad(key, "a mapping of settings", config[key])
    if ("ood" in config) != (OOD_FILE in files):
        raise bad("ood", f"present exactly when {OOD_FILE} is listed in 'files'", config.get("ood"))
    if "ood" in config:
        ood = config["ood"]
        if not isinstance(ood, dict) or ood.get("method") != OOD_METHOD:
            raise bad("ood", f"a mapping with method {OOD_METHOD!r}", ood)
        for key in ("threshold", "percentile", "floor"):
            if not _is_number(ood.get(key)) or (key.endswith("floor") and ood[key] <= 0):
                raise bad(
                    f"ood.{key}",
                    "a positive number" if key.endswith("floor") else "a number",
                    ood.get(key),
                )


def _check_arrays(arrays: dict, n_names: int, source: Path) -> None:
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


def _check_ood_arrays(arrays: dict, dim: int, n_names: int, source: Path) -> None:
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


def load_bundle(path) -> Bundle:
    """Load and validate a bundle; anything else is refused with a BundleError naming the problem.

    Order: format marker and version, integrity hash (bundle.json + files), schema of
    bundle.json, then the safetensors files and the classifier arrays' shapes.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file as load_numpy

    path = Path(path)
    if not path.is_dir():
        raise BundleError(
            f"{path}: not a microfer model bundle (expected a directory with bundle.json)"
        )
    marker = path / "bundle.json"
    try:
        config = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: not a microfer model bundle (bundle.json is missing)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{marker}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise BundleError(f"{marker}: unreadable ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise BundleError(f"{marker}: not a microfer model bundle (format marker missing)")
    version = config.get("format_version")
    if version == 1:
        raise BundleError(
            f"{marker}: bundle format version 1 has no integrity check over bundle.json and is "
            f"refused by this microfer (reads version {FORMAT_VERSION}); retrain it with "
            f"`microfer train` to write a version-{FORMAT_VERSION} bundle"
        )
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{marker}: bundle format version {json.dumps(version, default=str)} "
            f"is not supported (this microfer reads version {FORMAT_VERSION})"
        )

    # integrity first: nothing below is used before bundle.json and every file match the hash
    seal = config.get(INTEGRITY_KEY)
    if (
        not isinstance(seal, dict)
        or seal.get("algorithm") != "sha256"
        or not isinstance(seal.get("content"), str)
        or not _HEX64.fullmatch(seal["content"])
    ):
        raise BundleError(
            f"{marker}: entry {INTEGRITY_KEY!r} must be "
            '{"algorithm": "sha256", "content": <64 hex digits>}; '
            "the bundle cannot be verified (modified, or not written by microfer)"
        )
    listed = config.get("files")
    onnx_names = (
        sorted(n for n in listed if isinstance(n, str) and ONNX_FILE.fullmatch(n))
        if isinstance(listed, dict)
        else []
    )
    names = (
        *FILES,
        *onnx_names,
        *([OOD_FILE] if isinstance(listed, dict) and OOD_FILE in listed else []),
    )
    hashes = {}
    for name in names:
        f = path / name
        if not f.is_file():
            raise BundleError(f"{f}: missing from the bundle")
        hashes[name] = _sha256(f)
    if integrity_digest(config, hashes) != seal["content"]:
        recorded = config.get("files")
        changed = [n for n in names if isinstance(recorded, dict) and recorded.get(n) != hashes[n]]
        if (
            changed
            and integrity_digest(config, {n: recorded.get(n) for n in names}) == seal["content"]
        ):
            what = f"{changed[0]} checksum does not match bundle.json (the file was modified or replaced)"
        elif changed:
            what = f"{changed[0]} checksum does not match bundle.json, and bundle.json itself was modified"
        else:
            what = "bundle.json was modified after the bundle was written (its content no longer matches the hash)"
        raise BundleError(f"{path}: integrity check failed: {what}; refusing to load it")

    _check_config(config, marker)
    for name in names:  # the hash matched, so these only differ if the hash itself was rewritten
        if hashes[name] != config["files"][name]:
            raise BundleError(
                f"{path / name}: checksum does not match bundle.json (modified or foreign file)"
            )
    try:
        network = load_numpy(str(path / "network.safetensors"))
        arrays = load_numpy(str(path / "classifier.safetensors"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable safetensors file ({exc})") from None
    _check_arrays(arrays, len(config["classes"]), path / "classifier.safetensors")
    classifier = ArraySVM(arrays, config["svm"]["kernel"], config["svm"].get("gamma", 0.0))
    ood = None
    if OOD_FILE in names:
        try:
            ood_arrays = load_numpy(str(path / OOD_FILE))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BundleError(f"{path}: unreadable safetensors file ({exc})") from None
        _check_ood_arrays(
            ood_arrays, classifier.support_vectors.shape[1], len(config["classes"]), path / OOD_FILE
        )
        ood = RelativeMahalanobis.from_arrays(ood_arrays, config["ood"])
    return Bundle(
        path=path,
        config=config,
        network=network,
        classifier=classifier,
        onnx={n: path / n for n in onnx_names},
        ood=ood,
    )
