"""The aligned face of a still image (a photo, or a dataset's face crop).

Found and aligned as a clip's face is (dlib's 68 landmarks, the same similarity onto
`microfer.clip.face.CANONICAL_POINTS`): FER-2013's 48-px crops put the eyes 0.37 of the
side apart (median of 239 test images dlib found a face in), microfer's crop 0.36, so
aligned photos look like the training crops. Images at most `SMALL_CROP` px whose face
dlib cannot find (a fifth of FER-2013's) are taken as face crops as they are, the
datasets' convention; larger images without a face are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from microfer.errors import ClipError, MicroferError

FACE_SIZE = 64  # the shipped trunk's input (its card: input_size 64)
SMALL_CROP = 96  # px: an image this small is a dataset face crop (FER 48, CK+48)
DETECT_SIZE = 96  # small crops are enlarged to this before detection (dlib's window is 80 px)


@dataclass
class ImageFace:
    face: np.ndarray  # (FACE_SIZE, FACE_SIZE, 3) uint8, grey in 3 equal channels
    box: Optional[tuple[int, int, int, int]]  # the detected face in the image; None: taken whole
    aligned: bool


def image_face(image: np.ndarray, name: str = "image", size: int = FACE_SIZE) -> ImageFace:
    """The aligned grey face of one BGR (or grey) image; ClipError naming `name` when there is none."""
    import cv2

    from microfer.clip.face import alignment_transform, detect_landmarks, warp_face

    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] < 8 or image.shape[1] < 8:
        raise ClipError(f"{name}: not an image of a face (shape {image.shape})")
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = max(grey.shape) <= SMALL_CROP
    scale = DETECT_SIZE / max(grey.shape) if small else 1.0
    probe = (
        cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC) if small else grey
    )
    found = detect_landmarks(probe)
    if found is not None:
        points = found.points / scale
        face = warp_face(grey, alignment_transform(points, size), size)
        box = tuple(int(round(v / scale)) for v in found.box)
        return ImageFace(np.repeat(face[..., None], 3, axis=2), box, True)
    if not small:
        raise ClipError(f"{name}: no face found in the image")
    face = cv2.resize(
        grey,
        (size, size),
        interpolation=cv2.INTER_AREA if min(grey.shape) > size else cv2.INTER_CUBIC,
    )
    return ImageFace(np.repeat(face[..., None], 3, axis=2), None, False)


def list_image_files(folder) -> list[Path]:
    from microfer.clip.video import IMAGE_EXTENSIONS

    folder = Path(folder)
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise MicroferError(
            f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the folder"
        )
    return files
