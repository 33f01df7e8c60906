"""Calibrated class probabilities from the SVM's class scores, fitted on training subjects only.

The SVM gives per-class scores (one-vs-one votes + a squashed confidence: what `predict`
shows as scores), not probabilities. The calibrator is a multinomial logistic regression
on those K scores (K x K weights + K biases; for two classes it is Platt scaling), fitted
on OUT-OF-FOLD scores: the chosen feature set and SVM settings refitted on the inner
folds of the training subjects (the grid search's own splits), so each training row is
scored by a model that never saw its subject. In-sample scores would teach it an
overconfident mapping, since an SVM separates most of its own training rows.

The in-fold steps (which rows, which model) are in `microfer.learn.folds`; this module is
light (numpy; scikit-learn only to fit), since `load_bundle` and `predict` read it.

The label stays the SVM's: the probabilities are reported beside it, and their argmax can
differ from it on clips the scores leave close (results.json counts them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from microfer.metrics import softmax

METHOD = "multinomial logistic regression on out-of-fold SVM class scores"
CALIBRATOR_C = 1.0  # fixed in advance (scikit-learn's default), not tuned on these data
# logit of a class no calibration row holds: a probability of ~1e-13, never the argmax
ABSENT_LOGIT = -30.0


@dataclass
class Calibrator:
    """logits = scores @ weight.T + bias; probabilities = softmax(logits)."""

    weight: np.ndarray  # (K, K)
    bias: np.ndarray  # (K,)
    n_rows: int
    # indices (into the samples) of the rows it was fitted on; in memory only
    rows: Optional[np.ndarray] = None

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """(N, K) class scores, columns = class index -> (N, K) probabilities summing to 1."""
        scores = np.atleast_2d(np.asarray(scores, np.float64))
        return softmax(scores @ self.weight.T + self.bias)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    def config(self) -> dict[str, Any]:
        return {"method": METHOD, "C": CALIBRATOR_C, "n_rows": int(self.n_rows)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], config: Mapping[str, Any]):
        return cls(
            np.asarray(arrays["weight"], np.float64),
            np.asarray(arrays["bias"], np.float64),
            int(config.get("n_rows", 0)),
        )


def fit_calibrator(
    scores: np.ndarray, y: np.ndarray, n_classes: int, rows: Optional[np.ndarray] = None
) -> Calibrator:
    """The logistic regression from (N, K) class scores to the labels, as K x K arrays."""
    from sklearn.linear_model import LogisticRegression

    scores, y = np.asarray(scores, np.float64), np.asarray(y, np.int64)
    k = int(n_classes)
    weight = np.zeros((k, k))
    bias = np.full(k, ABSENT_LOGIT)
    present = np.unique(y)
    if present.size == 1:  # nothing to separate: the one class seen
        bias[present[0]] = 0.0
    else:
        lr = LogisticRegression(C=CALIBRATOR_C, max_iter=2000).fit(scores, y)
        if present.size == 2:  # scikit-learn's binary form: one logit, of classes_[1]
            bias[present] = [0.0, float(lr.intercept_[0])]
            weight[present[1]] = lr.coef_[0]
        else:
            weight[lr.classes_] = lr.coef_
            bias[lr.classes_] = lr.intercept_
    return Calibrator(weight, bias, int(y.size), None if rows is None else np.asarray(rows))
