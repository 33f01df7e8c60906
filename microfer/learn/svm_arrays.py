"""An SVM as plain arrays: scaler + the decision function of scikit-learn's SVC (one-vs-one),
reproduced exactly for the kernels microfer fits (linear, rbf), so bundles need no pickle."""

from __future__ import annotations

import numpy as np

from microfer.errors import BundleError

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
