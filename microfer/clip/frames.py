"""Frame numbers, rates and sizes: checking that a source has the frames asked for, that a
frame rate is one a camera can have, bounding a decoded frame's size, and writing many
numbers as short ranges in messages."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from microfer.errors import ClipError, MicroferError

# the fastest ME cameras record at 200 fps; past this a rate is a typo, and buffers sized
# from it (a window of seconds x fps frames) would not fit in memory
MAX_FPS = 1000.0

# Frames are shrunk on decode to at most this many pixels on their longer side, so a 4K
# clip costs what a 2K one does (a 3840x2160 BGR frame is 24.9 MB, at 2048x1152 7.1 MB).
# 2048 leaves every ME data set as recorded (the largest, SAMM, is 2040x1088); a face
# still spans hundreds of pixels, far more than the crops (<= 224 px) are made of.
MAX_FRAME_SIDE = 2048


def bounded(frame: np.ndarray) -> np.ndarray:
    """`frame` shrunk so that its longer side is at most MAX_FRAME_SIDE.

    Halvings by 2x2 averages while the frame is twice the cap or more, then bilinear for the
    rest (a factor in (0.5, 1)): area interpolation at a factor such as 0.53 costs 208 ms a
    4K frame, ten times the decode's share, and the halvings keep what bilinear alone would
    alias away."""
    h, w = frame.shape[:2]
    if max(h, w) <= MAX_FRAME_SIDE:
        return frame
    import cv2  # only decoders call this; frame numbers and rates need no OpenCV

    while max(h, w) >= 2 * MAX_FRAME_SIDE:
        frame = cv2.resize(frame, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        h, w = frame.shape[:2]
    if max(h, w) <= MAX_FRAME_SIDE:
        return frame
    scale = MAX_FRAME_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)


def check_numbers(source, numbers: Sequence[int]) -> None:
    available = set(source.numbers)
    missing = [n for n in numbers if n not in available]
    if missing:
        lo, hi = (source.numbers[0], source.numbers[-1]) if source.numbers else (None, None)
        raise ClipError(
            f"{source.path}: frame(s) {frame_ranges(missing)} not found "
            f"(available: {len(available)} frames, {lo}..{hi})"
        )


def frame_ranges(numbers: Sequence[int], limit: int = 6) -> str:
    """Compact '3-7, 9, 12-15' listing of frame numbers, for messages."""
    nums = sorted(set(int(n) for n in numbers))
    parts, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    more = f" (+{len(parts) - limit} more runs)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def check_fps(fps, what: str = "frame rate") -> float:
    """`fps` as a float; MicroferError unless it is a finite rate in (0, MAX_FPS]."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise MicroferError(f"{what} {fps!r} is not a number of frames per second") from None
    if not math.isfinite(value) or not 0 < value <= MAX_FPS:
        raise MicroferError(
            f"{what} {fps!r} is not a frame rate: give a number of frames per second in "
            f"(0, {MAX_FPS:g}]"
        )
    return value
