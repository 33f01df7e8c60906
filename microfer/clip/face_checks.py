"""Is the onset's face still there? Through a spotted curve (`face_presence`) and at the
apex frame (`check_apex_face`). A frame whose aligned crop still shows the onset's face in
place (`microfer.clip.tracking`) needs no detection; the others get a cheap detection
around the onset face."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from microfer.clip.face import (
    alignment_points,
    canonical_points,
    detect_faces,
    fit_landmarks,
    transform_points,
)
from microfer.clip.tracking import crop_shift, same_face
from microfer.errors import ClipError

# The apex face's alignment points (eye centres, nose tip, mouth corners), mapped through
# the onset frame's transform, must lie within this many eye-centre distances (mean) of
# where the alignment put the onset's: half an eye distance is a head moved by ~23 px in
# a 128 px crop, far beyond the sub-pixel drift of an ME recording, and still well short
# of a face that left the crop.
APEX_FACE_TOLERANCE = 0.5
# Face presence through a spotted curve: about this many evenly spaced checks (plus a
# bisection at each change), each a detection on the onset face's region downscaled so
# that the face is ~CHECK_FACE_PX wide.
PRESENCE_CHECKS = 12
CHECK_FACE_PX = 100


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def faces_near(image: np.ndarray, box, upsample: int) -> list:
    """Face boxes (full-image coordinates) found in the region around `box` (the onset face,
    half a box side of context each way), downscaled so that the face is about
    CHECK_FACE_PX wide (a cheap check); best overlap first, only boxes overlapping `box`
    by IoU >= 0.3."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1)
    context = side // 2
    rx0, ry0 = max(0, x0 - context), max(0, y0 - context)
    rx1, ry1 = min(w, x1 + context), min(h, y1 + context)
    region = image[ry0:ry1, rx0:rx1]
    if region.size == 0:
        return []
    max_side = max(64, int(round(max(region.shape[:2]) * min(1.0, CHECK_FACE_PX / side))))
    found = [
        (bx0 + rx0, by0 + ry0, bx1 + rx0, by1 + ry0)
        for bx0, by0, bx1, by1 in detect_faces(region, upsample, max_side)
    ]
    scored = sorted(((_iou(b, box), b) for b in found), key=lambda t: -t[0])
    return [b for score, b in scored if score >= 0.3]


def face_presence(
    images: list,
    numbers: list,
    box,
    upsample: int,
    tracked: Optional[Callable[[int], bool]] = None,
) -> list[int]:
    """Frame numbers (of `numbers`, after the onset at index 0) where the onset's face is
    not found: checked every few frames, and bisected between a check that finds it and
    one that does not, so the first / last missing frame is exact. `tracked(i)`: True when
    frame i's aligned crop still shows the onset's face (`tracking.same_face`), which is
    then present without a detection."""
    n = len(images)
    if n < 2:
        return []
    cache: dict[int, bool] = {0: True}

    def present(i: int) -> bool:
        if i not in cache:
            held = tracked is not None and tracked(i)
            cache[i] = held or bool(faces_near(images[i], box, upsample))
        return cache[i]

    step = max(1, int(np.ceil((n - 1) / PRESENCE_CHECKS)))
    checks = sorted(set(range(0, n, step)) | {n - 1})
    missing = np.zeros(n, bool)
    for a, b in zip(checks, checks[1:]):
        pa, pb = present(a), present(b)
        if pa and pb:
            continue
        if not pa and not pb:
            missing[a : b + 1] = True
            continue
        lo, hi = a, b  # present(lo) != present(hi): find where it changes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if present(mid) == pa:
                lo = mid
            else:
                hi = mid
        if pa:
            missing[hi : b + 1] = True
        else:
            missing[a : lo + 1] = True
    return [numbers[i] for i in np.flatnonzero(missing) if i > 0]


def check_apex_face(
    where: str,
    image: np.ndarray,
    apex_number: int,
    onset_box,
    M: np.ndarray,
    size: int,
    upsample: int,
) -> None:
    """ClipError (stage "face") unless the onset's face is at the apex frame, near where
    the onset frame's alignment puts it."""
    # the cheap detection: its box is only where the landmarks start, and what is judged is
    # where they end up (46 synthetic frames: box up to 21 px off, the distance below within
    # 0.006 eye distances of a full-size detection's, 6 ms instead of 36)
    boxes = faces_near(image, onset_box, upsample)
    if not boxes:
        raise ClipError(
            stage="face",
            message=f"{where}: no face found in the apex frame {apex_number} where the onset frame "
            f"has one (the face left the frame, or the clip cuts away)",
        )
    # Where the landmarks sit is what counts, not whether they clear the border as the
    # onset's must: a tight crop whose onset eye just clears the edge may not, 1 px on.
    moved = _moved(fit_landmarks(image, boxes[0]), M, size)
    if moved > APEX_FACE_TOLERANCE:
        raise ClipError(
            stage="face",
            message=f"{where}: the face in the apex frame {apex_number} is {moved:.2f} eye distances "
            f"away from where the onset frame aligned it (at most {APEX_FACE_TOLERANCE}); "
            "the head moved too far for one alignment",
        )


def _eye_px(size: int) -> float:
    """The eye-centre distance of an aligned size px crop, px."""
    canon = canonical_points(size)
    return float(np.hypot(*(canon[1] - canon[0])))


def _moved(points: np.ndarray, M: np.ndarray, size: int) -> float:
    """Mean distance (eye distances) of the alignment points of 68 landmarks, mapped
    through M, from where the alignment puts them."""
    mapped = transform_points(alignment_points(points), M)
    return float(np.hypot(*(mapped - canonical_points(size)).T).mean()) / _eye_px(size)


def apex_face_held(
    onset_grey: np.ndarray, apex_grey: np.ndarray, onset_points: np.ndarray, M: np.ndarray
) -> bool:
    """True when the apex crop shows the onset's face (`tracking.same_face`) so close to
    where the alignment put it that `check_apex_face` would pass without a detection: the
    onset's own alignment residual plus the shift of the crop (phase correlation) stay
    within half of APEX_FACE_TOLERANCE. The other half is left to what a landmark fit on
    the apex frame would add (the expression moves brows and mouth corners, a fit is
    never exact), so a face near the limit is still judged by its landmarks."""
    if not same_face(onset_grey, apex_grey):
        return False
    size = onset_grey.shape[0]
    moved = _moved(onset_points, M, size) + crop_shift(onset_grey, apex_grey) / _eye_px(size)
    return moved <= APEX_FACE_TOLERANCE / 2
