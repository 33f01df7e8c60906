"""Is the onset's face still where the alignment put it? Aligned crops compared with the
onset frame's, instead of detecting the face again.

Every frame of a clip is warped with the onset frame's transform, so where the face has
not moved its crop looks like the onset's: a blurred grey crop that correlates with the
onset's (normalised correlation >= `MIN_NCC`) shows the same face, and the phase
correlation of the two crops says how far it moved (crop px). Both cost ~0.1 ms per
128 px crop where a face detection costs 5-40 ms; a crop that does not pass is checked by
detection as before (`microfer.clip.face_checks`). The spotter of long videos
(`microfer.spotting.signal`) follows its face the same way.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

# Below this the crop no longer shows the onset's face as it was (the head turned, the face
# left, a hand came in). A micro-expression at its apex keeps 0.95 and more; a face replaced
# by a title card or another scene falls to ~0.
MIN_NCC = 0.85


def blur_sigma(size: int) -> float:
    """Gaussian sigma (px) that averages out sensor noise and JPEG blocks of a size px crop
    while ME-sized motion (1-3 px) survives."""
    return max(1.0, size / 64)


def grey_crop(face: np.ndarray, sigma: float) -> np.ndarray:
    """An aligned face (BGR or grey) as blurred grey float32."""
    grey = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY) if face.ndim == 3 else face
    return cv2.GaussianBlur(grey.astype(np.float32), (0, 0), sigma)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two crops (0 when either is flat)."""
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


@lru_cache(maxsize=4)
def _window(size: int) -> np.ndarray:
    return cv2.createHanningWindow((size, size), cv2.CV_32F)


def crop_shift(reference: np.ndarray, grey: np.ndarray) -> float:
    """How far (crop px) the content of `grey` moved from `reference` (phase correlation)."""
    # copies: phaseCorrelate multiplies its inputs by the window in place
    (dx, dy), _ = cv2.phaseCorrelate(reference.copy(), grey.copy(), _window(reference.shape[0]))
    return float(np.hypot(dx, dy))


def same_face(reference: np.ndarray, grey: np.ndarray) -> bool:
    """True when the crop still shows the reference crop's face (see MIN_NCC)."""
    return ncc(reference, grey) >= MIN_NCC
