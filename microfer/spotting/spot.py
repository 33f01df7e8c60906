"""Spotting micro- and macro-expressions in long videos: a streamed motion signal -> intervals.

Training-free, in two stages that are kept apart so an evaluation can compute the signal of
each video once and choose the interval parameters inside the training folds:

1. `motion_signal(source, fps)`: ONE pass over the video, a frame at a time (memory does
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
2. `spot_intervals(signal, PeakSettings)`: each region's curve is put in noise units
   ((value - median) / robust sd over the video), the largest region is the video's
   curve; peaks above `threshold` (with half that prominence) are intervals, bounded by
   `apex.spot_interval` between neighbouring peaks; intervals during which the head
   travelled more than `max_head` eye distances are head movements, not expressions;
   type = micro when the spotted duration is at most `micro_max_s`.

`spot_video` runs both. Thresholds are the caller's: `microfer spot` uses the defaults
below, `microfer spot-eval` chooses them on the training subjects of each fold.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from microfer.clip.regions import SPOT_REGIONS as REGION_NAMES
from microfer.clip.regions import boxes
from microfer.errors import ClipError, MicroferError

# the spotting regions (brows without the eye band, nose, mouth corners, and the eyes,
# used only to recognise blinks), from the one region table
SPOT_REGIONS = boxes(REGION_NAMES)
EYES = list(SPOT_REGIONS).index("eyes")
MOUTH = [list(SPOT_REGIONS).index(r) for r in ("mouth_left", "mouth_right")]
MICRO_MAX_S = 0.5  # MEGC: a micro-expression lasts at most 0.5 s


@dataclass(frozen=True)
class SignalSettings:
    size: int = 128  # aligned crop side, px
    blur: float = 2.0  # Gaussian sigma on the crop, px (noise, JPEG blocks)
    scales_s: tuple[float, ...] = (0.2, 0.4, 0.8)  # feature-difference distances k, seconds
    track_px: float = 0.5  # head translations above this (crop px) are followed
    min_ncc: float = 0.85  # crop vs reference correlation below this: fit again
    max_shift: float = 0.12  # translation followed (x size) before fitting again
    retry_s: float = 0.2  # face lost: try detection again this often
    upsample: int = 0  # dlib detector pyramid levels up
    detect_max_side: int = 640

    def __post_init__(self):
        if not 32 <= self.size <= 512:
            raise MicroferError(f"spotting crop size {self.size} is outside 32..512 px")
        if not self.scales_s or min(self.scales_s) <= 0:
            raise MicroferError(f"spotting scales must be positive seconds, got {self.scales_s}")


@dataclass(frozen=True)
class PeakSettings:
    """Stage 2's parameters. `microfer spot-eval` chooses threshold, blink_ratio, low, merge and
    talk_peaks on the training subjects of each fold; these defaults (for `microfer spot`) lie
    between what the folds chose on the synthetic sets (CAS(ME)^2: 15 / 1.0 / 0.15 / 0.2 / off;
    SAMM-LV: 12 / 1.25 / 0.1 / 0.2 / 4 in 7 of 10 folds; see docs/spotting.md).
    The talking rule is off by default: on a video without talking it can drop a long
    expression whose mouth rises in steps (seen on a synthetic CAS(ME)^2 video)."""

    threshold: float = 14.0  # peak height, in robust noise units of the video's curve
    low: float = 0.15  # onset/offset: where the curve falls below this fraction of the peak
    micro_max_s: float = MICRO_MAX_S  # spotted duration at most this -> micro, else macro
    min_s: float = 0.1  # shorter spotted intervals are noise
    max_head: float = 0.05  # head travel (eye distances) within an interval: a head movement
    blink_ratio: float = 1.25  # eye band peak above this x the interval's peak: a blink
    merge: float = 0.2  # neighbouring peaks whose dip stays above this x the lower: one expression
    burst: int = 3  # this many micro intervals in a row, gaps < burst_gap_s: talking / chewing
    burst_gap_s: float = 0.3
    talk_peaks: int = (
        0  # an interval whose mouth curve rises and falls this often: talking (0: off)
    )
    smooth_s: float = 0.03  # Gaussian smoothing of the curve, seconds


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
        from microfer.io import atomic_path

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


@dataclass
class SpottedInterval:
    onset: int  # frame numbers
    apex: int
    offset: int
    type: str  # micro | macro
    score: float  # peak height in noise units
    emotion: str = ""  # spot-then-recognise: the classifier's label of a micro interval

    def to_dict(self) -> dict:
        return asdict(self)


def runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index runs where `mask` is True."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


# ---------------------------------------------------------------- stage 1: the signal


class _Tracker:
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
        from microfer.clip.face import warp_face

        crop = cv2.cvtColor(warp_face(frame, M, self.s.size), cv2.COLOR_BGR2GRAY).astype(np.float32)
        return cv2.GaussianBlur(crop, (0, 0), self.s.blur)

    def fit(self, frame: np.ndarray) -> bool:
        from microfer.clip.face import alignment_transform, detect_landmarks, landmark_problem

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
        if far or _ncc(crop, self.ref) < self.s.min_ncc:
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


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _region_slices(size: int) -> list[tuple[slice, slice]]:
    return [
        (
            slice(int(y0 * size), int(np.ceil(y1 * size))),
            slice(int(x0 * size), int(np.ceil(x1 * size))),
        )
        for x0, y0, x1, y1 in SPOT_REGIONS.values()
    ]


class _Ring:
    """The last `length` crops (float16), addressed by their stream index."""

    def __init__(self, length: int, size: int):
        self.length = length
        self.data = np.zeros((length, size, size), np.float16)
        self.valid = np.zeros(length, bool)
        self.index = np.full(length, -1, np.int64)

    def put(self, i: int, crop: Optional[np.ndarray]) -> None:
        slot = i % self.length
        self.index[slot] = i
        self.valid[slot] = crop is not None
        if crop is not None:
            self.data[slot] = crop

    def get(self, i: int) -> Optional[np.ndarray]:
        if i < 0:
            return None
        slot = i % self.length
        if self.index[slot] != i or not self.valid[slot]:
            return None
        return self.data[slot].astype(np.float32)

    def toward(self, c: int, k: int) -> np.ndarray:
        """Frame c + k, or where it is missing (video start or end, face lost) the face frame
        nearest to it between c and c + k: the motion is then measured over a shorter step,
        never against one side alone (which would show the other side's expressions)."""
        step = 1 if k > 0 else -1
        for j in range(c + k, c, -step):
            frame = self.get(j)
            if frame is not None:
                return frame
        return self.get(c)


def _motion_at(ring: _Ring, c: int, ks: Sequence[int], slices) -> np.ndarray:
    """Region values of stream index c (NaN when c has no face): per scale the region means of
    min(|F_c - F_c-k|, |F_c - F_c+k|), the largest over the scales. (The largest 8 x 8 px block
    of a region instead of its mean spotted worse on the synthetic CAS(ME)^2 set: overall F1
    0.59 against 0.69, blinks leaking into the brow blocks.)"""
    out = np.full(len(slices), np.nan, np.float32)
    centre = ring.get(c)
    if centre is None:
        return out
    for k in ks:
        diff = np.minimum(np.abs(centre - ring.toward(c, -k)), np.abs(centre - ring.toward(c, k)))
        values = np.array([diff[ys, xs].mean() for ys, xs in slices], np.float32)
        out = np.fmax(out, values)
    return out


def motion_signal(
    source,
    fps: float,
    settings: SignalSettings = SignalSettings(),
    progress: bool = False,
    desc: str = "spot",
) -> MotionSignal:
    """Stage 1 over a whole FrameSource (video file, frame folder or arrays), in one stream."""
    from tqdm import tqdm

    from microfer.clip.video import stream_frames

    if not fps or fps <= 0:
        raise MicroferError(
            f"{source.path}: frame rate {fps!r} is not a positive number of frames per second"
        )
    numbers = np.asarray(source.numbers, np.int64)
    n = len(numbers)
    if n < 3:
        raise ClipError(f"{source.path}: {n} frame(s); spotting needs a video of at least 3 frames")
    ks = sorted({max(1, int(round(s * fps))) for s in settings.scales_s})
    kmax = ks[-1]
    ring = _Ring(2 * kmax + 1, settings.size)
    slices = _region_slices(settings.size)
    regions = np.full((n, len(slices)), np.nan, np.float32)
    head = np.full((n, 3), np.nan, np.float32)
    eye_px = np.full(n, np.nan, np.float32)
    tracker = _Tracker(settings, fps)
    realigned: list[int] = []
    shape = None
    seen = 0
    bar = tqdm(
        total=n,
        desc=desc,
        unit="frame",
        file=sys.stderr,
        disable=None if progress else True,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    try:
        for i, (number, frame) in enumerate(stream_frames(source)):
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                raise ClipError(
                    f"{source.path}: frame {number} is {frame.shape[1]}x{frame.shape[0]}, the first "
                    f"frame {shape[1]}x{shape[0]}; one video has one frame size"
                )
            crop, fitted = tracker.crop(i, frame)
            if fitted:
                realigned.append(int(number))
            if crop is not None:
                head[i], eye_px[i] = tracker.pose()
            ring.put(i, crop)
            if i - kmax >= 0:
                regions[i - kmax] = _motion_at(ring, i - kmax, ks, slices)
            seen = i + 1
            bar.update(1)
    finally:
        bar.close()
    for c in range(max(0, seen - kmax), seen):
        regions[c] = _motion_at(ring, c, ks, slices)
    keep = slice(0, seen)  # a video whose container overstated its length ends early
    return MotionSignal(
        numbers=numbers[keep],
        fps=float(fps),
        regions=regions[keep],
        head=head[keep],
        eye_px=eye_px[keep],
        realigned=realigned,
        frame_size=(int(shape[1]), int(shape[0])) if shape is not None else (0, 0),
    )


# ---------------------------------------------------------------- stage 2: the intervals


def spot_curve(signal: MotionSignal, smooth_s: float = PeakSettings.smooth_s) -> np.ndarray:
    """The video's curve in noise units: per region (value - median) / (1.4826 MAD), the
    largest region per frame, smoothed inside each run of face frames; NaN without a face."""
    z = region_z(signal)
    spotted = [k for k in range(z.shape[1]) if k != EYES]
    curve = z[:, spotted].max(axis=1)
    return _smooth_runs(curve, smooth_s * signal.fps)


def region_z(signal: MotionSignal) -> np.ndarray:
    """(n, R) each region's motion in robust noise units: (value - median) / (1.4826 MAD)."""
    regions = np.asarray(signal.regions, np.float64)
    face = ~np.isnan(regions).any(axis=1)
    z = np.full(regions.shape, np.nan)
    if face.sum() < 3:
        return z
    values = regions[face]
    med = np.median(values, axis=0)
    mad = 1.4826 * np.median(np.abs(values - med), axis=0)
    mad = np.where(mad > 1e-6, mad, max(1e-6, float(np.mean(mad))))
    z[face] = (values - med) / mad
    return z


def _smooth_runs(curve: np.ndarray, sigma: float) -> np.ndarray:
    from microfer.clip.apex import gaussian_smooth

    curve = curve.copy()
    if sigma >= 0.5:
        for a, b in runs_of(~np.isnan(curve)):
            curve[a:b] = gaussian_smooth(curve[a:b], sigma)
    return curve


def spot_intervals(
    signal: MotionSignal,
    peaks: PeakSettings = PeakSettings(),
    curves: Optional[tuple[np.ndarray, np.ndarray]] = None,
    rejected: Optional[list] = None,
) -> list[SpottedInterval]:
    """Stage 2: intervals (frame numbers) from a measured signal. `curves` = spot_curves(signal)
    when the caller has them already (spot-eval tries many thresholds on one signal);
    `rejected` collects (interval, reason) of the peaks that were not expressions."""
    from scipy.signal import find_peaks

    from microfer.clip.apex import spot_interval

    curve, eyes, mouth = spot_curves(signal, peaks.smooth_s) if curves is None else curves
    face = ~np.isnan(curve)
    out: list[SpottedInterval] = []
    dropped = [] if rejected is None else rejected
    for a, b in runs_of(face):
        run = curve[a:b]
        if len(run) < 3:
            continue
        tops, _ = find_peaks(
            np.concatenate([[-np.inf], run, [-np.inf]]),
            height=peaks.threshold,
            prominence=0.5 * peaks.threshold,
        )
        tops = _merge_shoulders(run, tops - 1, peaks.merge)
        # each peak owns the stretch between the lowest points that separate it from its neighbours
        cuts = (
            [0]
            + [int(p + np.argmin(run[p : q + 1])) for p, q in zip(tops[:-1], tops[1:])]
            + [len(run) - 1]
        )
        for j, top in enumerate(tops):
            lo, hi = cuts[j], cuts[j + 1]
            if hi - lo < 2:
                continue
            segment = run[lo : hi + 1]
            onset, _, offset = spot_interval(segment, low=peaks.low, sigma=0.5)
            onset, apex, offset = a + lo + onset, a + int(top), a + lo + offset
            onset, offset = min(onset, apex), max(offset, apex)
            duration = (offset - onset + 1) / signal.fps
            if duration < peaks.min_s:
                continue
            kind = "micro" if duration <= peaks.micro_max_s else "macro"
            interval = SpottedInterval(
                int(signal.numbers[onset]),
                int(signal.numbers[apex]),
                int(signal.numbers[offset]),
                kind,
                round(float(run[top]), 3),
            )
            if _head_travel(signal, onset, offset) > peaks.max_head:
                dropped.append((interval, "head movement"))
            elif np.nanmax(eyes[onset : offset + 1]) > peaks.blink_ratio * run[top]:
                dropped.append((interval, "blink"))
            elif peaks.talk_peaks and _syllables(mouth[onset : offset + 1]) >= peaks.talk_peaks:
                dropped.append((interval, "talking"))
            else:
                out.append(interval)
    return _without_bursts(out, signal.fps, peaks, dropped)


def _merge_shoulders(run: np.ndarray, tops: np.ndarray, merge: float) -> np.ndarray:
    """Peaks whose separating dip stays above `merge` x the lower of the two are shoulders of
    one expression (a long one rises and falls in steps at the larger scales): keep the higher."""
    kept: list[int] = []
    for top in (int(t) for t in tops):
        if kept and run[kept[-1] : top + 1].min() > merge * min(run[kept[-1]], run[top]):
            if run[top] > run[kept[-1]]:
                kept[-1] = top
            continue
        kept.append(top)
    return np.asarray(kept, int)


def spot_curves(
    signal: MotionSignal, smooth_s: float = PeakSettings.smooth_s
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the spotting curve, the eye band's curve, the mouth's curve), in noise units, smoothed."""
    z = region_z(signal)
    sigma = smooth_s * signal.fps
    return (
        spot_curve(signal, smooth_s),
        _smooth_runs(z[:, EYES], sigma),
        _smooth_runs(z[:, MOUTH].max(axis=1), sigma),
    )


def _syllables(mouth: np.ndarray) -> int:
    """How many times the mouth curve rises to a peak of at least a quarter of its range."""
    from scipy.signal import find_peaks

    mouth = mouth[~np.isnan(mouth)]
    if mouth.size < 3:
        return 0
    span = float(mouth.max() - mouth.min())
    return len(find_peaks(mouth, prominence=0.25 * span)[0]) if span > 0 else 0


def _without_bursts(
    intervals: list[SpottedInterval], fps: float, peaks: PeakSettings, dropped: list
) -> list[SpottedInterval]:
    """Drop runs of >= `burst` micro-length intervals separated by gaps < `burst_gap_s`:
    syllables of speech and chewing come in such trains, expressions hardly ever do."""
    if peaks.burst < 2 or not intervals:
        return intervals
    groups, current = [], [intervals[0]]
    for iv in intervals[1:]:
        prev = current[-1]
        if iv.type == prev.type == "micro" and (iv.onset - prev.offset) / fps < peaks.burst_gap_s:
            current.append(iv)
        else:
            groups.append(current)
            current = [iv]
    groups.append(current)
    kept = []
    for g in groups:
        if len(g) >= peaks.burst:
            dropped.extend((iv, "burst (talking, chewing)") for iv in g)
        else:
            kept.extend(g)
    return kept


def _head_travel(signal: MotionSignal, onset: int, offset: int) -> float:
    """Largest distance of the face centre from its place at the onset, in eye distances."""
    pose = signal.head[onset : offset + 1].astype(np.float64)
    eyes = float(np.nanmedian(signal.eye_px[onset : offset + 1]))
    if not np.isfinite(eyes) or eyes <= 0:
        return 0.0
    moved = np.hypot(*(pose[:, :2] - pose[0, :2]).T) / eyes
    # a roll moves the face outline (~1.5 eye distances from the centre) by angle x radius
    turned = np.radians(np.abs(pose[:, 2] - pose[0, 2])) * 1.5
    return float(np.nanmax(moved + turned))


# ---------------------------------------------------------------- one video


@dataclass
class SpotResult:
    path: str
    fps: float
    n_frames: int
    intervals: list[SpottedInterval]
    lost: list[tuple[int, int]]  # frame-number ranges without a usable face
    realigned: list[int]
    signal: MotionSignal
    settings: dict
    rejected: list = field(default_factory=list)  # (interval, why): peaks that were not expressions

    def to_dict(self) -> dict:
        return {
            "video": self.path,
            "fps": self.fps,
            "n_frames": self.n_frames,
            "intervals": [iv.to_dict() for iv in self.intervals],
            "rejected": [dict(iv.to_dict(), reason=why) for iv, why in self.rejected],
            "face_lost": [list(r) for r in self.lost],
            "realigned": self.realigned,
            "settings": self.settings,
        }


def video_fps(path: Path, default: Optional[float] = None) -> float:
    """A video file's frame rate from its container; `default` for frame folders (which have none)."""
    path = Path(path)
    if path.is_file():
        from microfer.clip.video import native_stderr_captured

        with native_stderr_captured():
            cap = cv2.VideoCapture(str(path))
            fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
            cap.release()
        if fps and 1 <= fps <= 10_000:
            return float(fps)
    if default is None:
        raise MicroferError(
            f"{path}: no frame rate known for it (a frame folder, or a video without one); "
            "give it with --fps"
        )
    return float(default)


def spot_video(
    path,
    fps: Optional[float] = None,
    signal_settings: SignalSettings = SignalSettings(),
    peaks: PeakSettings = PeakSettings(),
    progress: bool = False,
) -> SpotResult:
    """Spot the expressions of one video file or frame folder (frame rate from the container,
    or `fps`, which a frame folder needs)."""
    from microfer.clip.video import open_frames

    source = open_frames(path)
    fps = float(fps) if fps else video_fps(Path(path))
    signal = motion_signal(source, fps, signal_settings, progress=progress)
    rejected: list = []
    intervals = spot_intervals(signal, peaks, rejected=rejected)
    return SpotResult(
        path=str(path),
        fps=fps,
        n_frames=len(signal.numbers),
        intervals=intervals,
        lost=signal.lost_ranges(),
        realigned=signal.realigned,
        signal=signal,
        settings={"signal": asdict(signal_settings), "peaks": asdict(peaks)},
        rejected=rejected,
    )


def recognise_micro(
    intervals: Sequence[SpottedInterval], source, predictor
) -> list[tuple[SpottedInterval, str]]:
    """Spot-then-recognise: set `emotion` of each micro interval with a `predict.Predictor`
    (onset, spotted apex and offset given, so the classifier sees the interval as spotted).
    Returns the (interval, reason) of those that could not be recognised."""
    failed = []
    for iv in intervals:
        if iv.type != "micro":
            continue
        numbers = [n for n in source.numbers if iv.onset <= n <= iv.offset]
        try:
            frames = source.read(numbers)
            pred = predictor.predict(
                frames, onset=0, apex=numbers.index(iv.apex), offset=len(numbers) - 1
            )
            iv.emotion = pred.label
        except MicroferError as exc:
            failed.append((iv, str(exc)))
    return failed
