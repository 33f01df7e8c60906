"""Recognition metrics, MEGC style: computed ONCE on the confusion matrix pooled over folds.

Conventions (stated because papers differ):
- Labels are integer class indices 0..K-1; the confusion matrix has truth in rows,
  predictions in columns.
- UF1 (unweighted F1) is the mean over classes of F1_c = 2 TP / (2 TP + FP + FN), over the
  classes that occur in the truth OR the predictions. A class absent from both has an
  undefined F1 (0/0) and is skipped; a class that is predicted but never true has F1 = 0
  and counts (it is a real mistake).
- UAR (unweighted average recall) is the mean of TP / (TP + FN) over the classes present
  in the truth (recall of an absent class is undefined).
- Pooling: per-fold UF1s averaged over subjects is NOT what MEGC reports; a subject with
  two clips would weigh as much as one with twenty. Pool predictions, then compute.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = truth, columns = prediction."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels, y_pred {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} holds labels outside 0..{n_classes - 1}")
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 of each class; NaN for a class absent from truth and predictions (skipped by UF1)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall of each class; NaN for a class absent from the truth."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def per_class_precision(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    predicted = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(predicted > 0, np.diag(cm) / predicted, np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def uf1(cm: np.ndarray) -> float:
    return _nanmean(per_class_f1(cm))


def uar(cm: np.ndarray) -> float:
    return _nanmean(per_class_recall(cm))


def accuracy(cm: np.ndarray) -> float:
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def score(y_true, y_pred, n_classes: int, metric: str = "uf1") -> float:
    """One metric of predictions (used as the inner-CV selection score)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    try:
        return {"uf1": uf1, "uar": uar, "accuracy": accuracy}[metric](cm)
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; expected uf1, uar or accuracy") from None


def majority_class(y_train, n_classes: int) -> int:
    """The most frequent training class (ties -> the lowest index, deterministic)."""
    counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=n_classes)
    return int(np.argmax(counts))


def summarize(y_true, y_pred, classes: Sequence[str]) -> dict:
    """All metrics of pooled predictions, JSON-ready (NaN becomes None)."""
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, k)

    def clean(v: float):
        return None if v is None or np.isnan(v) else round(float(v), 6)

    f1, rec, prec = per_class_f1(cm), per_class_recall(cm), per_class_precision(cm)
    return {
        "n": int(cm.sum()),
        "uf1": clean(uf1(cm)),
        "uar": clean(uar(cm)),
        "accuracy": clean(accuracy(cm)),
        "confusion": cm.tolist(),
        "classes": list(classes),
        "per_class": {
            c: {
                "f1": clean(f1[i]),
                "recall": clean(rec[i]),
                "precision": clean(prec[i]),
                "support": int(cm[i].sum()),
                "predicted": int(cm[:, i].sum()),
            }
            for i, c in enumerate(classes)
        },
    }


def bootstrap_interval(
    y_true,
    y_pred,
    groups,
    n_classes: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Subject-level bootstrap interval of pooled UF1 and UAR (percentile method).

    Subjects, not clips, are resampled with replacement: clips of one subject are not
    independent (same face, same session), and LOSO's unit of generalisation is the
    subject. Each resample pools the confusion matrices of the drawn subjects (a subject
    drawn twice counts twice) and recomputes the metrics MEGC-style.
    """
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    groups = np.asarray(groups).astype(str)
    subjects = sorted(set(groups.tolist()))
    if len(subjects) < 2:
        raise ValueError("a subject-level bootstrap needs at least 2 subjects")
    cms = np.stack(
        [confusion_matrix(y_true[groups == s], y_pred[groups == s], n_classes) for s in subjects]
    )
    rng = np.random.default_rng(seed)
    # how often each subject is drawn in each resample
    counts = rng.multinomial(len(subjects), np.full(len(subjects), 1.0 / len(subjects)), n_boot)
    pooled = np.einsum("bs,sij->bij", counts, cms)
    lo, hi = (1.0 - level) / 2 * 100, (1.0 + level) / 2 * 100
    out: dict = {"n_boot": int(n_boot), "seed": int(seed), "level": level, "unit": "subject"}
    for name, fn in (("uf1", uf1), ("uar", uar)):
        values = np.array([fn(cm) for cm in pooled])
        values = values[~np.isnan(values)]
        out[name] = [
            round(float(np.percentile(values, lo)), 6),
            round(float(np.percentile(values, hi)), 6),
        ]
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, stable for large values."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def calibration(prob: np.ndarray, y, bins: int = 10) -> dict:
    """Brier score (multi-class: squared error summed over classes, mean over samples),
    expected calibration error of the top class over `bins` equal-width confidence bins,
    and the bins themselves (the reliability diagram's points)."""
    prob = np.asarray(prob, np.float64)
    y = np.asarray(y, np.int64)
    onehot = np.eye(prob.shape[1])[y]
    conf, pred = prob.max(1), prob.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            acc, c = float((pred[m] == y[m]).mean()), float(conf[m].mean())
            ece += m.mean() * abs(acc - c)
            rows.append(
                {
                    "bin": [round(float(lo), 2), round(float(hi), 2)],
                    "n": int(m.sum()),
                    "accuracy": round(acc, 4),
                    "confidence": round(c, 4),
                }
            )
    return {
        "brier": round(float(((prob - onehot) ** 2).sum(1).mean()), 5),
        "ece": round(float(ece), 5),
        "reliability": rows,
    }
