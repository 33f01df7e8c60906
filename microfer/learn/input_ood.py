"""The input check of bundles trained on circulated flow images: is this clip like the real
training clips at all?

Why a second score: the bundle's own OOD score (`learn.ood`) looks at the features its SVM
reads, and a circulated-style flow is min-max scaled per image, so the amplitude that would
tell sensor noise from a micro-expression is gone, and synthetic motion looks like real motion
there. Measured on the bundle trained on the 207 shared samples, it flagged 3 of 12 synthetic
clips (docs/circulated-inputs.md). This check reads what the features drop:

- the flow image's texture (14 numbers): per channel u, v, strain, where most pixels lie
  (median), the share of pixels near it (little motion), the spread, and the roughness
  (neighbour differences over the spread: real flow of a recorded face is rough, smooth
  warps and moving textures are not); how well the strain agrees with the strain of the
  28x28 u, v; the correlation of u and v;
- the apex face's look (7 numbers): the logits of the shipped FER teacher
  (`models.fer_teacher`, run in numpy) on the apex face in the circulated crop geometry,
  grey, 64 px. A face that the teacher reads as no expression the real clips show, or no face,
  lands far from the training apex crops.

Which numbers: chosen on a development set of synthetic clips and moving textures (seeds
of their own, not the evaluation ones) among flow statistics, teacher logits, teacher
pooled features and grey-level statistics: pooled features and grey levels flagged most of
a whole dataset (SAMM) left out of the fit, logits plus flow statistics did so least while
flagging most synthetic and every non-face input (docs/circulated-inputs.md has the table).

The score is the squared Mahalanobis distance (standardised, Ledoit-Wolf shrunk:
`ood.Gaussian`) of these 21 numbers to the training clips. Its threshold comes from the
training rows only: each subject is left out once, the Gaussian fitted on the others scores
its rows, and the threshold is the `percentile` of those held-out scores, so that about
(100 - percentile)% of new real clips are flagged by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from microfer.errors import MicroferError
from microfer.learn.ood import DEFAULT_PERCENTILE, Gaussian
from microfer.models.fer_teacher import numpy_features

METHOD = "input_statistics_mahalanobis"
VERSION = 1  # of the statistics below: a bundle records it, a mismatch is refused
FLOW_STATS = tuple(
    f"{c}_{s}" for c in ("u", "v", "strain") for s in ("median", "near", "spread", "rough")
) + ("strain_consistency", "uv_correlation")
TEACHER_STATS = tuple(f"teacher_logit_{i}" for i in range(7))
STATS = FLOW_STATS + TEACHER_STATS
NEAR = 0.05  # of the 0..1 range: "near the median" (about 13 grey levels of the PNG)
FACE_PX = 64  # the teacher's input side
ARRAYS = ("center", "scale", "mean", "basis", "eigvals")


def _flow_statistics(flow: np.ndarray, strain: np.ndarray) -> list[float]:
    out = []
    for c in (flow[..., 0], flow[..., 1], strain):
        c = np.asarray(c, np.float64)
        med, spread = float(np.median(c)), float(c.std())
        rough = np.abs(np.diff(c, axis=0)).mean() + np.abs(np.diff(c, axis=1)).mean()
        out += [med, float(np.mean(np.abs(c - med) < NEAR)), spread, rough / (spread + 1e-6)]
    u, v = np.asarray(flow[..., 0], np.float64), np.asarray(flow[..., 1], np.float64)
    du_dy, du_dx = np.gradient(u)
    dv_dy, dv_dx = np.gradient(v)
    small = np.sqrt(du_dx**2 + dv_dy**2 + 0.5 * (du_dy + dv_dx) ** 2)
    return out + [_correlation(small, strain), _correlation(u, v)]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0  # a flat channel: no relation either way
    return float(np.corrcoef(a, b)[0, 1])


def apex_grey(clip) -> np.ndarray:
    """(64, 64) uint8 grey apex face in the circulated crop geometry: a circulated entry's
    apex image is that crop already; a clip prepared from frames is cut to `CIRCULATED_CROP`
    of its aligned face first (the box the circulated flow covers)."""
    import cv2  # OpenCV stays out of bundle loading, which imports this module

    from microfer.clip.circulated import CIRCULATED_CROP

    face = np.asarray(clip.apex_face)
    if face.ndim != 3 or face.shape[0] < 2 or face.shape[1] < 2:
        raise MicroferError(f"input check: the apex face has shape {face.shape}, not an image")
    if clip.apex_source != "derived_inputs":
        h, w = face.shape[:2]
        x0, y0, x1, y1 = CIRCULATED_CROP
        face = face[
            int(round(y0 * h)) : int(round(y1 * h)), int(round(x0 * w)) : int(round(x1 * w))
        ]
    grey = cv2.cvtColor(np.ascontiguousarray(face), cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (FACE_PX, FACE_PX), interpolation=cv2.INTER_AREA)


def input_statistics(clips: Sequence, teacher_state: dict) -> np.ndarray:
    """(n, len(STATS)) statistics of prepared clips whose flow is circulated-style (min-max per
    image); `teacher_state` from `models.fer_teacher.teacher_numpy_state`."""
    if not clips:
        return np.zeros((0, len(STATS)))
    wrong = [c for c in clips if c.flow_units != "minmax_per_image"]
    if wrong:
        raise MicroferError(
            f"input check: reads circulated-style flow (minmax_per_image), a clip holds {wrong[0].flow_units}"
        )
    flow = np.array([_flow_statistics(c.flow, c.strain) for c in clips])
    greys = np.stack([apex_grey(c) for c in clips]).astype(np.float32)
    x = ((greys / 255.0 - 0.5) * 2.0)[:, None]
    logits = np.concatenate(
        [numpy_features(teacher_state, x[i : i + 32])[1] for i in range(0, len(x), 32)]
    )
    return np.concatenate([flow, logits], axis=1)


@dataclass
class InputCheck:
    center: np.ndarray  # (d,) standardisation of the statistics
    scale: np.ndarray
    mean: np.ndarray  # (d,) in standardised units
    gaussian: Gaussian
    threshold: float = float("inf")
    percentile: float = DEFAULT_PERCENTILE
    rows: int = 0  # training rows the Gaussian and the threshold were made from
    groups: int = 0  # subjects among them (each left out once for the threshold)
    # the FER teacher whose logits were fitted (`models.fer_teacher`): another one gives
    # other logits, so predict refuses a bundle whose teacher is not the shipped one
    teacher_sha256: str = ""

    @classmethod
    def fit(cls, X: np.ndarray) -> "InputCheck":
        X = np.asarray(X, np.float64)
        # any width: the bench compares other statistics with it; a bundle's is checked on load
        if X.ndim != 2 or len(X) < 2 or X.shape[1] < 1:
            raise MicroferError(f"input check: need (n >= 2, d) statistics, got {X.shape}")
        center, scale = X.mean(0), X.std(0)
        scale[scale < 1e-12] = 1.0  # a constant column carries nothing; keep it from dividing by 0
        Z = (X - center) / scale
        mean = Z.mean(0)
        return cls(center, scale, mean, Gaussian.fit(Z - mean), rows=len(X))

    def score(self, X: np.ndarray) -> np.ndarray:
        Z = (np.asarray(X, np.float64) - self.center) / self.scale
        return self.gaussian.distance(Z - self.mean)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "center": self.center,
            "scale": self.scale,
            "mean": self.mean,
            "basis": self.gaussian.basis,
            "eigvals": self.gaussian.eigvals,
        }

    def config(self) -> dict:
        """bundle.json "input_ood": the scalars, and what the threshold was made from."""
        return {
            "method": METHOD,
            "version": VERSION,
            "statistics": list(STATS),
            "threshold": float(self.threshold),
            "percentile": float(self.percentile),
            "threshold_from": "scores of each training subject left out of the fit",
            "rows": int(self.rows),
            "groups": int(self.groups),
            "floor": float(self.gaussian.floor),
            "teacher_sha256": self.teacher_sha256,
        }

    @classmethod
    def from_arrays(cls, arrays: dict, config: dict) -> "InputCheck":
        a = {k: np.asarray(arrays[k], np.float64) for k in ARRAYS}
        return cls(
            a["center"],
            a["scale"],
            a["mean"],
            Gaussian(a["basis"], a["eigvals"], float(config["floor"])),
            threshold=float(config["threshold"]),
            percentile=float(config["percentile"]),
            rows=int(config.get("rows", 0)),
            groups=int(config.get("groups", 0)),
            teacher_sha256=str(config.get("teacher_sha256", "")),
        )


def held_out_input_scores(X: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row's score from a fit on the OTHER groups (subjects): what a new person scores."""
    groups = np.asarray(groups)
    out = np.full(len(X), np.nan)  # NaN: a group whose absence leaves fewer than 2 rows
    for g in np.unique(groups):
        test = groups == g
        if (~test).sum() >= 2:
            out[test] = InputCheck.fit(X[~test]).score(X[test])
    return out


def fit_input_check(
    X: np.ndarray, groups: np.ndarray, percentile: float = DEFAULT_PERCENTILE
) -> InputCheck:
    """The check fitted on the training rows X, its threshold from their held-out scores."""
    if len(np.unique(groups)) < 2:
        raise MicroferError(
            "input check threshold: needs at least 2 subjects (each is left out once)"
        )
    check = InputCheck.fit(X)
    held = held_out_input_scores(X, groups)
    if np.isnan(held).all():
        raise MicroferError(
            "input check threshold: no subject can be left out with 2 rows remaining"
        )
    check.threshold = float(np.nanpercentile(held, percentile))
    check.percentile = float(percentile)
    check.groups = int(len(np.unique(groups)))
    return check
