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
    calibrator.safetensors   (optional, format version 3) the calibrator's weight and bias
                             (`microfer.learn.calibrate`), described by bundle.json's
                             "calibration" entry: class probabilities beside the SVM scores.
                             Bundles without it (all of version 2) load and give no probabilities.
    input_ood.safetensors    (optional; bundles trained on circulated inputs) the input check's
                             arrays (`microfer.learn.input_ood.InputCheck`); its scalars are
                             bundle.json's "input_ood" entry. Bundles without it load (no check).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from microfer.errors import BundleError
from microfer.io import atomic_dir, file_sha256, write_json
from microfer.learn.bundle_schema import (  # noqa: F401  (the file names: importable from here too)
    CALIBRATOR_FILE,
    FILES,
    HEX64,
    INPUT_OOD_FILE,
    ONNX_FILE,
    OOD_FILE,
    check_arrays,
    check_calibrator_arrays,
    check_config,
    check_input_ood_arrays,
    check_ood_arrays,
)
from microfer.learn.calibrate import Calibrator
from microfer.learn.input_ood import InputCheck
from microfer.learn.ood import RelativeMahalanobis
from microfer.learn.svm_arrays import ARRAYS, SUPPORTED_KERNELS, ArraySVM  # noqa: F401

FORMAT = "microfer-bundle"
# 2: adds the "integrity" entry covering bundle.json and every file;
# 3: adds the optional calibrator (class probabilities); version 2 bundles still load
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
INTEGRITY_KEY = "integrity"
IMAGE_INPUT = "image"  # bundle.json "input" of image bundles (face images, not clips)


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
    # None: a bundle trained before calibrated probabilities (it gives SVM scores only)
    calibrator: Optional[Calibrator] = None
    input_ood: Optional[InputCheck] = None  # None: not trained on circulated inputs, or before

    @property
    def class_names(self) -> list[str]:
        return list(self.config["classes"])


file_sha256 = file_sha256


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
    calibrator: Optional[Calibrator] = None,
    input_ood: Optional[InputCheck] = None,
) -> Path:
    """Write a bundle directory atomically: it is built in a temporary sibling and swapped in
    whole, so a failure leaves an older bundle at `path` intact. A non-empty `path` that is not
    a bundle (no bundle.json) is refused.

    `onnx`: {file name: ONNX model bytes} of the network parts (names matching `ONNX_FILE`).
    `ood`: the fitted OOD score, written to `OOD_FILE` with its scalars in bundle.json's "ood".
    `calibrator`: written to `CALIBRATOR_FILE`, described in bundle.json's "calibration".
    `input_ood`: the fitted input check, written to `INPUT_OOD_FILE` and bundle.json's "input_ood".
    """
    final = Path(path)
    with atomic_dir(final, is_ours=lambda p: (p / "bundle.json").is_file()) as tmp:
        scores = (ood, input_ood, calibrator)
        _write_bundle_files(tmp, final, network_state, classifier, config, onnx, scores)
    return final


def _write_bundle_files(path: Path, final: Path, network_state, classifier, config, onnx, scores):
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
    entries = ("ood", "input_ood", "calibration")
    doc = {k: v for k, v in config.items() if k not in (INTEGRITY_KEY, *entries)}
    extra = sorted(onnx or {})
    # each optional part: its arrays in its own file, its scalars under its bundle.json entry
    for part, key, name in zip(scores, entries, (OOD_FILE, INPUT_OOD_FILE, CALIBRATOR_FILE)):
        if part is not None:
            arrays = {k: np.ascontiguousarray(v) for k, v in part.arrays().items()}
            save_numpy(arrays, str(path / name))
            doc[key] = part.config()
            extra.append(name)
    hashes = {name: file_sha256(path / name) for name in (*FILES, *extra)}
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


def load_bundle(path) -> Bundle:
    """Load and validate a bundle; anything else is refused with a BundleError naming the problem.

    Order: format marker and version, integrity hash (bundle.json + files), schema of
    bundle.json, then the safetensors files and the classifier arrays' shapes.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(
            f"{path}: not a microfer model bundle (expected a directory with bundle.json)"
        )
    marker = path / "bundle.json"
    config = _read_marker(path, marker)
    # integrity first: nothing below is used before bundle.json and every file match the hash
    names, onnx_names, hashes = _verify_integrity(path, marker, config)
    check_config(config, marker)
    for name in names:  # the hash matched, so these only differ if the hash itself was rewritten
        if hashes[name] != config["files"][name]:
            raise BundleError(
                f"{path / name}: checksum does not match bundle.json (modified or foreign file)"
            )
    network = _load_safetensors(path, "network.safetensors")
    arrays = _load_safetensors(path, "classifier.safetensors")
    check_arrays(arrays, len(config["classes"]), path / "classifier.safetensors")
    classifier = ArraySVM(arrays, config["svm"]["kernel"], config["svm"].get("gamma", 0.0))
    ood = None
    if OOD_FILE in names:
        ood_arrays = _load_safetensors(path, OOD_FILE)
        check_ood_arrays(
            ood_arrays, classifier.support_vectors.shape[1], len(config["classes"]), path / OOD_FILE
        )
        ood = RelativeMahalanobis.from_arrays(ood_arrays, config["ood"])
    calibrator = None
    if CALIBRATOR_FILE in names:
        cal_arrays = _load_safetensors(path, CALIBRATOR_FILE)
        check_calibrator_arrays(cal_arrays, len(config["classes"]), path / CALIBRATOR_FILE)
        calibrator = Calibrator.from_arrays(cal_arrays, config["calibration"])
    input_ood = None
    if INPUT_OOD_FILE in names:
        input_arrays = _load_safetensors(path, INPUT_OOD_FILE)
        check_input_ood_arrays(input_arrays, path / INPUT_OOD_FILE)
        input_ood = InputCheck.from_arrays(input_arrays, config["input_ood"])
    return Bundle(
        path=path,
        config=config,
        network=network,
        classifier=classifier,
        onnx={n: path / n for n in onnx_names},
        ood=ood,
        calibrator=calibrator,
        input_ood=input_ood,
    )


def _read_marker(path: Path, marker: Path) -> dict:
    """bundle.json, checked to be a microfer bundle of the version this microfer reads."""
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
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise BundleError(
            f"{marker}: bundle format version {json.dumps(version, default=str)} "
            f"is not supported (this microfer reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    return config


def _verify_integrity(path: Path, marker: Path, config: dict):
    """(file names, ONNX file names, their hashes on disk); BundleError unless bundle.json and
    every file match the integrity hash, naming what was changed."""
    seal = config.get(INTEGRITY_KEY)
    if (
        not isinstance(seal, dict)
        or seal.get("algorithm") != "sha256"
        or not isinstance(seal.get("content"), str)
        or not HEX64.fullmatch(seal["content"])
    ):
        raise BundleError(
            f"{marker}: entry {INTEGRITY_KEY!r} must be "
            '{"algorithm": "sha256", "content": <64 hex digits>}; '
            "the bundle cannot be verified (modified, or not written by microfer)"
        )
    listed = config.get("files")
    listed = listed if isinstance(listed, dict) else {}
    onnx_names = sorted(n for n in listed if isinstance(n, str) and ONNX_FILE.fullmatch(n))
    optional = (OOD_FILE, INPUT_OOD_FILE, CALIBRATOR_FILE)
    names = (*FILES, *onnx_names, *(n for n in optional if n in listed))
    hashes = {}
    for name in names:
        f = path / name
        if not f.is_file():
            raise BundleError(f"{f}: missing from the bundle")
        hashes[name] = file_sha256(f)
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
    return names, onnx_names, hashes


def _load_safetensors(path: Path, name: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file as load_numpy

    try:
        return load_numpy(str(path / name))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable safetensors file ({exc})") from None
