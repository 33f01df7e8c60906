"""Out-of-distribution score: relative Mahalanobis distance (Ren et al. 2021, arXiv:2106.09022).

Fitted on the features the bundle's classifier sees (its training rows), with plain arrays
in and out:

    MD_k(x)  = Mahalanobis distance of x to class k's mean, one covariance SHARED by the classes
    MD_0(x)  = Mahalanobis distance of x to the mean of all training rows, their own covariance
    score(x) = min_k (MD_k(x) - MD_0(x))          higher = further from every class

Subtracting the background term removes what is merely unusual in every direction the
training data varies anyway (identity, lighting), which is why the relative distance beats
the plain one on near-OOD inputs.

Features are standardised (training mean / std) and the covariances shrunk towards a
multiple of the identity by Ledoit-Wolf, because feature sets here often have more columns
than a dataset has clips (flow_grid14: 784 columns, a composite: 442 clips). A shrunk
covariance is the identity times a floor plus a low-rank part in the span of the training
rows, so it is stored as that span (basis rows), its eigenvalues and the floor: n x d
numbers instead of d x d, and exact.

Both Gaussians share ONE floor, the larger of their two Ledoit-Wolf floors. In the
directions no training row spans, neither covariance was estimated; with two floors the
score there is (1/floor_class - 1/floor_background) x the residual's size, the difference of
two estimates times the largest part of a far input. Measured on the quick demo's bundle
(flow_grid14, 18 clips): with two floors sensor-noise clips scored far BELOW new
in-distribution clips (AUROC 0.11); with one floor that part cancels, the score lives in
the span of the training data, and the same clips separate completely (AUROC 1.00).

The threshold comes from the training data only: every subject is left out once, the score
is fitted on the others and the left-out subject's clips are scored; the threshold is the
`percentile` of those held-out scores. In-sample scores would set it far too low (a
Gaussian fitted to few clips is tight around them), and leaving out whole subjects matches
what `predict` meets: a new person, in distribution. With 95, about 5% of new in-distribution
clips are flagged by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from microfer.errors import MicroferError

METHOD = "relative_mahalanobis"
DEFAULT_PERCENTILE = 95.0
ARRAYS = (
    "center",
    "scale",
    "class_means",
    "class_basis",
    "class_eigvals",
    "background_mean",
    "background_basis",
    "background_eigvals",
)


def _shrinkage(residuals: np.ndarray) -> float:
    from sklearn.covariance import ledoit_wolf_shrinkage

    return float(ledoit_wolf_shrinkage(residuals, assume_centered=True))


def _floor(residuals: np.ndarray, shrinkage: float) -> float:
    mu = float((residuals**2).mean())  # trace / d of the empirical covariance
    return max(shrinkage * mu, 1e-6 * mu, 1e-12)  # > 0 even when Ledoit-Wolf shrinks nothing


@dataclass
class Gaussian:
    """A shrunk Gaussian: covariance = floor * I + basis.T @ diag(eigvals - floor) @ basis."""

    basis: np.ndarray  # (r, d) orthonormal rows spanning the training residuals
    eigvals: np.ndarray  # (r,) covariance eigenvalues along those rows (each >= floor)
    floor: float  # covariance eigenvalue in every other direction

    @classmethod
    def fit(cls, residuals: np.ndarray, floor: Optional[float] = None) -> "Gaussian":
        """From residuals already centred (rows minus their mean, or their class mean);
        `floor` replaces the Ledoit-Wolf floor (shrinkage x mean variance) when given."""
        n, d = residuals.shape
        shrinkage = _shrinkage(residuals)
        _, s, vt = np.linalg.svd(residuals, full_matrices=False)
        keep = s > s.max() * 1e-9 if s.size else s > 0
        floor = _floor(residuals, shrinkage) if floor is None else floor
        eigvals = (1 - shrinkage) * s[keep] ** 2 / n + floor
        return cls(basis=vt[keep], eigvals=eigvals, floor=floor)

    def distance(self, u: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of centred rows u (n, d)."""
        proj = u @ self.basis.T
        rest = np.maximum((u**2).sum(1) - (proj**2).sum(1), 0.0)
        return rest / self.floor + (proj**2 / self.eigvals).sum(1)


@dataclass
class RelativeMahalanobis:
    center: np.ndarray  # (d,) standardisation
    scale: np.ndarray  # (d,)
    class_means: np.ndarray  # (k, d) in standardised units
    shared: Gaussian  # the classes' covariance
    background_mean: np.ndarray
    background: Gaussian
    threshold: float = float("inf")
    percentile: float = DEFAULT_PERCENTILE
    held_out: str = "subject"  # what was left out to score the training rows for the threshold

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray) -> "RelativeMahalanobis":
        """Class Gaussians (shared covariance) and the background Gaussian of training rows X."""
        X = np.asarray(X, np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) < 2 or len(y) != len(X):
            raise MicroferError(
                f"OOD score: need (n >= 2, d) features with one label each, got {X.shape}"
            )
        center = X.mean(0)
        scale = X.std(0)
        scale[scale < 1e-12] = 1.0  # a constant column carries nothing; keep it from dividing by 0
        Z = (X - center) / scale
        labels = np.unique(y)
        means = np.stack([Z[y == c].mean(0) for c in labels])
        within = Z - means[np.searchsorted(labels, y)]
        total = Z - Z.mean(0)
        floor = max(
            _floor(within, _shrinkage(within)), _floor(total, _shrinkage(total))
        )  # one floor: see above
        return cls(
            center=center,
            scale=scale,
            class_means=means,
            shared=Gaussian.fit(within, floor),
            background_mean=Z.mean(0),
            background=Gaussian.fit(total, floor),
        )

    def score(self, X: np.ndarray) -> np.ndarray:
        """(n,) relative Mahalanobis scores; higher = more out of distribution."""
        Z = (np.asarray(X, np.float64) - self.center) / self.scale
        per_class = np.stack([self.shared.distance(Z - m) for m in self.class_means], axis=1)
        return per_class.min(1) - self.background.distance(Z - self.background_mean)

    def is_ood(self, X: np.ndarray) -> np.ndarray:
        return self.score(X) > self.threshold

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "center": self.center,
            "scale": self.scale,
            "class_means": self.class_means,
            "class_basis": self.shared.basis,
            "class_eigvals": self.shared.eigvals,
            "background_mean": self.background_mean,
            "background_basis": self.background.basis,
            "background_eigvals": self.background.eigvals,
        }

    def config(self) -> dict:
        """What bundle.json records (the floors and threshold are scalars, readable there)."""
        return {
            "method": METHOD,
            "threshold": float(self.threshold),
            "percentile": float(self.percentile),
            "threshold_from": f"scores of each training {self.held_out} left out of the fit",
            "held_out": self.held_out,
            "floor": float(self.shared.floor),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], config: dict) -> "RelativeMahalanobis":
        a = {k: np.asarray(arrays[k], np.float64) for k in ARRAYS}
        return cls(
            center=a["center"],
            scale=a["scale"],
            class_means=a["class_means"],
            shared=Gaussian(a["class_basis"], a["class_eigvals"], float(config["floor"])),
            background_mean=a["background_mean"],
            background=Gaussian(
                a["background_basis"], a["background_eigvals"], float(config["floor"])
            ),
            threshold=float(config["threshold"]),
            percentile=float(config["percentile"]),
            held_out=str(config.get("held_out", "subject")),
        )


def held_out_scores(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row's score from a fit on the OTHER groups (subjects): what a new person scores."""
    groups = np.asarray(groups)
    out = np.full(len(X), np.nan)  # NaN: a group whose absence leaves fewer than 2 rows to fit on
    for g in np.unique(groups):
        test = groups == g
        if (~test).sum() >= 2:
            out[test] = RelativeMahalanobis.fit(X[~test], np.asarray(y)[~test]).score(X[test])
    return out


def fit_ood(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    percentile: float = DEFAULT_PERCENTILE,
    held_out: str = "subject",
) -> RelativeMahalanobis:
    """The score fitted on all rows, its threshold from leave-one-group-out scores (see module doc);
    `held_out` names what a group is, for bundle.json (subjects; random folds where there are none)."""
    if len(np.unique(groups)) < 2:
        raise MicroferError(
            f"OOD threshold: needs at least 2 groups ({held_out}s; each is left out once)"
        )
    model = RelativeMahalanobis.fit(X, y)
    scores = held_out_scores(X, y, groups)
    if np.isnan(scores).all():
        raise MicroferError(
            f"OOD threshold: no {held_out} can be left out with 2 or more training rows remaining"
        )
    model.threshold = float(np.nanpercentile(scores, percentile))
    model.percentile = float(percentile)
    model.held_out = held_out
    return model
