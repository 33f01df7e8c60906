"""Stage 1 of spotting: a streamed motion signal of a long video.

`motion_signal(source, fps)`: ONE pass over the video, a frame at a time (memory does
not grow with its length):
- the face is aligned once (dlib landmarks -> `face.alignment_transform`, as in
  prepare) and the same transform is applied to the following frames;
- the aligned grey crop of every frame is matched to the crop taken at alignment time
  (phase correlation, ~0.1 ms): translations over `track_px` are folded into the
  transform (the head drifts), and when the crop no longer resembles the reference
  (normalised correlation < `min_ncc`: the head turned, the face left, a hand came
  in) or the head moved far, the landmarks are fitted again (`realigned`); when no
  usable face is found the frames are marked lost and detection is retried every
  `retry_s` seconds;
- motion of frame t, per region (brows left/right, nose, mouth left/right; the eyes
  are left out, so blinks and gaze do not count), for each time scale k:
      mean over the region of  min(|F_t - F_{t-k}|, |F_t - F_{t+k}|)
  on blurred crops F. This is the feature difference of Moilanen et al. (ICPR 2014)
  with the two sides taken by their minimum instead of their mean: an expression that
  starts and ends within k of t counts fully at its apex, a neighbour k frames away
  leaves no half-height ghost (one side stays small), a step (a refreshed alignment)
  shows on one side only, and linear drift stays at drift x k. The region's value is
  the largest over the scales (`scales_s`: micro- to macro-length), so short and long
  expressions are both measured against neutral frames.
Averaging 0.025 s of crops before differencing (5 frames at 200 fps, against sensor noise)
was measured and left out: synthetic SAMM-LV overall F1 0.712 with it, 0.740 without.
Frame t's value needs frames up to t + k_max: the stream keeps a ring of 2 k_max + 1
crops (128 x 128 float16: 10.5 MB at 200 fps with the default 0.8 s largest scale).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from microfer.clip.face import alignment_transform, detect_landmarks, landmark_problem, warp_face
from microfer.clip.tracking import MIN_NCC, ncc
from microfer.clip.video import stream_frames
from microfer.errors import ClipError, MicroferError
from microfer.io import atomic_path
from microfer.spotting.difference import SPOT_REGIONS, CropRing, motion_at, region_slices

EYES = list(SPOT_REGIONS).index("eyes")
MOUTH = [list(SPOT_REGIONS).index(r) for r in ("mouth_left", "mouth_right")]


@dataclass(frozen=True)
class SignalSettings:
    size: int = 128  # aligned crop side, px
    blur: float = 2.0  # Gaussian sigma on the crop, px (noise, JPEG blocks)
    scales_s: tuple[float, ...] = (0.2, 0.4, 0.8)  # feature-difference distances k, seconds
    track_px: float = 0.5  # head translations above this (crop px) are followed
    min_ncc: float = MIN_NCC  # crop vs reference correlation below this: fit again
    max_shift: float = 0.12  # translation followed (x size) before fitting again
    retry_s: float = 0.2  # face lost: try detection again this often
    upsample: int = 0  # dlib detector pyramid levels up
    detect_max_side: int = 640

    def __post_init__(self):
        if not 32 <= self.size <= 512:
            raise MicroferError(f"spotting crop size {self.size} is outside 32..512 px")
        if not self.scales_s or min(self.scales_s) <= 0:
            raise MicroferError(f"spotting scales must be positive seconds, got {self.scales_s}")


@dataclass
class MotionSignal:
    """What one pass over a video measured (plain arrays, saved as .npz by spot-eval)."""

    numbers: np.ndarray  # (n,) frame numbers
    fps: float
    regions: np.ndarray  # (n, R) float32 motion per SPOT_REGIONS region; NaN without a face
    head: (
        np.ndarray
    )  # (n, 3) float32 face centre in the image (px) and roll (deg); NaN without a face
    eye_px: np.ndarray  # (n,) float32 eye-centre distance in the image, px; NaN without a face
    realigned: list[int] = field(default_factory=list)  # frame numbers where landmarks were fitted
    frame_size: tuple[int, int] = (0, 0)  # (W, H)

    @property
    def face(self) -> np.ndarray:
        return ~np.isnan(self.regions).any(axis=1)

    @property
    def region_names(self) -> list[str]:
        return list(SPOT_REGIONS)

    def lost_ranges(self) -> list[tuple[int, int]]:
        """(first, last) frame numbers of each run of frames without a usable face."""
        return [(int(self.numbers[a]), int(self.numbers[b - 1])) for a, b in runs_of(~self.face)]

    def save(self, path: Path) -> None:
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    numbers=self.numbers,
                    fps=self.fps,
                    regions=self.regions,
                    head=self.head,
                    eye_px=self.eye_px,
                    realigned=np.asarray(self.realigned, np.int64),
                    frame_size=np.asarray(self.frame_size, np.int64),
                )

    @classmethod
    def load(cls, path: Path) -> "MotionSignal":
        with np.load(path) as z:
            return cls(
                numbers=z["numbers"],
                fps=float(z["fps"]),
                regions=z["regions"],
                head=z["head"],
                eye_px=z["eye_px"],
                realigned=[int(v) for v in z["realigned"]],
                frame_size=tuple(int(v) for v in z["frame_size"]),
            )


def runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index runs where `mask` is True."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


class FaceTracker:
    """The face alignment of a stream: fitted once, followed, fitted again when it no longer holds."""

    def __init__(self, settings: SignalSettings, fps: float):
        self.s = settings
        self.retry = max(1, int(round(settings.retry_s * fps)))
        self.M: Optional[np.ndarray] = None
        self.ref: Optional[np.ndarray] = None
        self.next_try = 0
        self.window = cv2.createHanningWindow((settings.size, settings.size), cv2.CV_32F)
        self.followed = np.zeros(2)

    def grey(self, frame: np.ndarray, M: np.ndarray) -> np.ndarray:
        crop = cv2.cvtColor(warp_face(frame, M, self.s.size), cv2.COLOR_BGR2GRAY).astype(np.float32)
        return cv2.GaussianBlur(crop, (0, 0), self.s.blur)

    def fit(self, frame: np.ndarray) -> bool:
        face = detect_landmarks(frame, self.s.upsample, self.s.detect_max_side)
        if face is None or landmark_problem(face, frame.shape) is not None:
            self.M = self.ref = None
            return False
        self.M = alignment_transform(face.points, self.s.size).astype(np.float64)
        self.ref = self.grey(frame, self.M)
        self.followed = np.zeros(2)
        return True

    def crop(self, i: int, frame: np.ndarray) -> tuple[Optional[np.ndarray], bool]:
        """(aligned blurred grey crop or None without a usable face, whether landmarks were fitted)."""
        fitted = False
        if self.M is None:
            if i < self.next_try:
                return None, False
            if not self.fit(frame):
                self.next_try = i + self.retry
                return None, False
            fitted = True
        crop = self.grey(frame, self.M)
        # copies: phaseCorrelate multiplies its inputs by the window in place
        (dx, dy), _ = cv2.phaseCorrelate(self.ref.copy(), crop.copy(), self.window)
        if np.hypot(dx, dy) > self.s.track_px:
            self.follow(crop, dx, dy)
            crop = self.grey(frame, self.M)
        far = np.hypot(*self.followed) > self.s.max_shift * self.s.size
        if far or ncc(crop, self.ref) < self.s.min_ncc:
            if fitted or not self.fit(frame):  # a fresh fit that does not hold: no usable face here
                self.M = self.ref = None
                self.next_try = i + self.retry
                return None, fitted
            fitted = True
            crop = self.ref
        return crop, fitted

    def follow(self, crop: np.ndarray, dx: float, dy: float) -> None:
        """Fold the head's movement since the reference into the transform: a rigid (rotation +
        translation) fit of the crop to the reference (ECC), from the phase-correlation shift;
        the shift alone when ECC does not converge. Runs only while the head moves."""
        warp = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        try:
            _, warp = cv2.findTransformECC(
                self.ref,
                crop,
                warp,
                cv2.MOTION_EUCLIDEAN,
                (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-4),
                None,
                1,
            )
        except cv2.error:
            warp = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        # the crop at W(x) shows what the reference shows at x: new transform = W^-1 o M
        inv = cv2.invertAffineTransform(warp).astype(np.float64)
        self.M = np.column_stack(
            [inv[:, :2] @ self.M[:, :2], inv[:, :2] @ self.M[:, 2] + inv[:, 2]]
        )
        self.followed += warp[:, 2]

    def pose(self) -> tuple[np.ndarray, float]:
        """(face centre x, y in the image (px), roll (deg)) and eye-centre distance (image px)."""
        inv = cv2.invertAffineTransform(self.M.astype(np.float32))
        centre = inv[:, :2] @ np.array([self.s.size / 2, self.s.size / 2]) + inv[:, 2]
        scale = float(np.hypot(*self.M[0, :2]))
        roll = float(np.degrees(np.arctan2(self.M[1, 0], self.M[0, 0])))
        return np.array([centre[0], centre[1], roll]), 0.36 * self.s.size / scale


@dataclass
class _Measured:
    """What the stream filled in, per stream index."""

    regions: np.ndarray
    head: np.ndarray
    eye_px: np.ndarray
    realigned: list[int] = field(default_factory=list)
    shape: Optional[tuple] = None  # the first frame's
    seen: int = 0  # frames the source gave


def _checked_numbers(source, fps: float) -> np.ndarray:
    if not fps or fps <= 0:
        raise MicroferError(
            f"{source.path}: frame rate {fps!r} is not a positive number of frames per second"
        )
    numbers = np.asarray(source.numbers, np.int64)
    n = len(numbers)
    if n < 3:
        raise ClipError(f"{source.path}: {n} frame(s); spotting needs a video of at least 3 frames")
    return numbers


def _progress_bar(n: int, desc: str, progress: bool) -> tqdm:
    return tqdm(
        total=n,
        desc=desc,
        unit="frame",
        file=sys.stderr,
        disable=None if progress else True,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def _measure(source, tracker: FaceTracker, ks: list[int], size: int, bar: tqdm) -> _Measured:
    """The one pass: frame t's regions are written once frame t + k_max has arrived."""
    n, kmax = len(source.numbers), ks[-1]
    ring = CropRing(2 * kmax + 1, size)
    slices = region_slices(size)
    m = _Measured(
        regions=np.full((n, len(slices)), np.nan, np.float32),
        head=np.full((n, 3), np.nan, np.float32),
        eye_px=np.full(n, np.nan, np.float32),
    )
    for i, (number, frame) in enumerate(stream_frames(source)):
        if m.shape is None:
            m.shape = frame.shape
        elif frame.shape != m.shape:
            raise ClipError(
                f"{source.path}: frame {number} is {frame.shape[1]}x{frame.shape[0]}, the first "
                f"frame {m.shape[1]}x{m.shape[0]}; one video has one frame size"
            )
        crop, fitted = tracker.crop(i, frame)
        if fitted:
            m.realigned.append(int(number))
        if crop is not None:
            m.head[i], m.eye_px[i] = tracker.pose()
        ring.put(i, crop)
        if i - kmax >= 0:
            m.regions[i - kmax] = motion_at(ring, i - kmax, ks, slices)
        m.seen = i + 1
        bar.update(1)
    for c in range(max(0, m.seen - kmax), m.seen):
        m.regions[c] = motion_at(ring, c, ks, slices)
    return m


def motion_signal(
    source,
    fps: float,
    settings: SignalSettings = SignalSettings(),
    progress: bool = False,
    desc: str = "spot",
) -> MotionSignal:
    """Stage 1 over a whole FrameSource (video file, frame folder or arrays), in one stream."""
    numbers = _checked_numbers(source, fps)
    ks = sorted({max(1, int(round(s * fps))) for s in settings.scales_s})
    bar = _progress_bar(len(numbers), desc, progress)
    try:
        m = _measure(source, FaceTracker(settings, fps), ks, settings.size, bar)
    finally:
        bar.close()
    keep = slice(0, m.seen)  # a video whose container overstated its length ends early
    return MotionSignal(
        numbers=numbers[keep],
        fps=float(fps),
        regions=m.regions[keep],
        head=m.head[keep],
        eye_px=m.eye_px[keep],
        realigned=m.realigned,
        frame_size=(int(m.shape[1]), int(m.shape[0])) if m.shape is not None else (0, 0),
    )
