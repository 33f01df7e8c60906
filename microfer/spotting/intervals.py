"""Stage 2 of spotting: intervals from a measured signal.

`spot_intervals(signal, PeakSettings)`: each region's curve is put in noise units
((value - median) / robust sd over the video), the largest region is the video's
curve; peaks above `threshold` (`micro_threshold` for the micro-length ones; with half
that prominence) are intervals, bounded by `apex.spot_interval` between neighbouring peaks;
intervals during which the head travelled more than `max_head` eye distances are head
movements, not expressions, and micro-length ones just before or after a stronger macro
interval are its tail (the rules are in `spotting.rules`); type = micro when the spotted
duration is at most `micro_max_s`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy.signal import find_peaks

from microfer.clip.apex import gaussian_smooth, spot_interval
from microfer.spotting.rules import head_travel, syllables, without_bursts, without_tails
from microfer.spotting.signal import EYES, MOUTH, MotionSignal, runs_of

MICRO_MAX_S = 0.5  # MEGC: a micro-expression lasts at most 0.5 s


@dataclass(frozen=True)
class PeakSettings:
    """Stage 2's parameters. `microfer spot-eval` chooses threshold, blink_ratio,
    micro_threshold, low, merge and talk_peaks on the training subjects of each fold; these
    defaults (for `microfer spot`) lie between what the folds chose on the synthetic sets
    (CAS(ME)^2: 15 / 1.0 / 0.15 / 0.2 / off;
    SAMM-LV: 12 / 1.25 / 0.1 / 0.2 / 4 in 7 of 10 folds; see docs/spotting.md).
    The talking rule is off by default: on a video without talking it can drop a long
    expression whose mouth rises in steps (seen on a synthetic CAS(ME)^2 video)."""

    threshold: float = 14.0  # peak height, in robust noise units of the video's curve
    # the height a MICRO-length peak must reach instead (None: `threshold`): micro-expressions
    # are a few pixels, macro ones many, and talking rises as high as the small ones
    micro_threshold: Optional[float] = None
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
    # a micro-length peak within this many seconds of a stronger macro interval is its rise or
    # return, not an expression of its own (fixed in advance at the micro bound, not tuned)
    tail_s: float = MICRO_MAX_S


@dataclass
class SpottedInterval:
    onset: int  # frame numbers
    apex: int
    offset: int
    type: str  # micro | macro
    score: float  # peak height in noise units
    emotion: str = ""  # spot-then-recognise: the classifier's label of a micro interval
    # and its SVM scores and calibrated probabilities (None: a bundle without a calibrator)
    scores: Optional[dict[str, float]] = None
    probabilities: Optional[dict[str, float]] = None

    def to_dict(self) -> dict:
        return asdict(self)


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
    curve = curve.copy()
    if sigma >= 0.5:
        for a, b in runs_of(~np.isnan(curve)):
            curve[a:b] = gaussian_smooth(curve[a:b], sigma)
    return curve


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


@dataclass
class _Peak:
    """One spotted peak: its interval, and where it lies in the signal (stream indices)."""

    interval: SpottedInterval
    onset: int
    offset: int
    height: float  # the curve at the apex, unrounded


def spot_intervals(
    signal: MotionSignal,
    peaks: PeakSettings = PeakSettings(),
    curves: Optional[tuple[np.ndarray, np.ndarray]] = None,
    rejected: Optional[list] = None,
) -> list[SpottedInterval]:
    """Stage 2: intervals (frame numbers) from a measured signal. `curves` = spot_curves(signal)
    when the caller has them already (spot-eval tries many thresholds on one signal);
    `rejected` collects (interval, reason) of the peaks that were not expressions."""
    return apply_rules(signal, measured_peaks(signal, peaks, curves), peaks, rejected)


@dataclass
class MeasuredPeak:
    """A peak above the threshold and what the rules look at, measured once: spot-eval tries
    several rule settings on the same peaks."""

    interval: SpottedInterval
    head: float  # head travel within the interval, eye distances
    eyes: float  # the eye band's highest value within it, noise units
    height: float  # the curve at the apex, noise units (unrounded)
    mouth: np.ndarray  # the mouth curve within it (the talking rule counts its syllables)


def measured_peaks(
    signal: MotionSignal,
    peaks: PeakSettings = PeakSettings(),
    curves: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> list[MeasuredPeak]:
    """The peaks of the signal's curve under `peaks`' threshold, merge, low, min_s and smoothing,
    before the rules that tell expressions from other motion."""
    curve, eyes, mouth = spot_curves(signal, peaks.smooth_s) if curves is None else curves
    found = []
    for a, b in runs_of(~np.isnan(curve)):
        for peak in _run_peaks(signal, curve[a:b], a, peaks):
            lo, hi = peak.onset, peak.offset + 1
            found.append(
                MeasuredPeak(
                    peak.interval,
                    head_travel(signal, peak.onset, peak.offset),
                    float(np.nanmax(eyes[lo:hi])),
                    float(peak.height),
                    mouth[lo:hi],
                )
            )
    return found


def apply_rules(
    signal: MotionSignal,
    found: list[MeasuredPeak],
    peaks: PeakSettings = PeakSettings(),
    rejected: Optional[list] = None,
) -> list[SpottedInterval]:
    """The measured peaks that `peaks`' rules keep as expressions; `rejected` collects
    (interval, reason) of the others."""
    out: list[SpottedInterval] = []
    dropped = [] if rejected is None else rejected
    for peak in found:
        reason = _rejection(peak, peaks)
        if reason is None:
            out.append(peak.interval)
        else:
            dropped.append((peak.interval, reason))
    return neighbour_rules(out, signal.fps, peaks, dropped)


def neighbour_rules(
    intervals: list[SpottedInterval], fps: float, peaks: PeakSettings, dropped: list
) -> list[SpottedInterval]:
    """The rules that judge kept intervals by their neighbours (macro tails, then bursts); the
    peak scorer's kept peaks pass them too."""
    out = without_tails(intervals, fps, peaks.tail_s, dropped)
    return without_bursts(out, fps, peaks.burst, peaks.burst_gap_s, dropped)


def _run_peaks(signal: MotionSignal, run: np.ndarray, a: int, peaks: PeakSettings) -> list[_Peak]:
    """The peaks of one run of face frames (`run` = the curve from stream index `a` on)."""
    if len(run) < 3:
        return []
    lowest = min(peaks.threshold, _type_threshold("micro", peaks))
    tops, _ = find_peaks(
        np.concatenate([[-np.inf], run, [-np.inf]]),
        height=lowest,
        prominence=0.5 * lowest,
    )
    tops = _merge_shoulders(run, tops - 1, peaks.merge)
    # each peak owns the stretch between the lowest points that separate it from its neighbours
    cuts = (
        [0]
        + [int(p + np.argmin(run[p : q + 1])) for p, q in zip(tops[:-1], tops[1:])]
        + [len(run) - 1]
    )
    found = []
    for j, top in enumerate(tops):
        lo, hi = cuts[j], cuts[j + 1]
        if hi - lo < 2:
            continue
        peak = _peak_between(signal, run, a, lo, hi, top, peaks)
        if peak is not None and peak.height >= _type_threshold(peak.interval.type, peaks):
            found.append(peak)
    return found


def _type_threshold(kind: str, peaks: PeakSettings) -> float:
    """The height a peak of this type must reach."""
    if kind == "micro" and peaks.micro_threshold is not None:
        return peaks.micro_threshold
    return peaks.threshold


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


def _peak_between(
    signal: MotionSignal, run: np.ndarray, a: int, lo: int, hi: int, top, peaks: PeakSettings
) -> Optional[_Peak]:
    """The interval of the peak at `top` within run[lo..hi]; None when it is too short."""
    segment = run[lo : hi + 1]
    onset, _, offset = spot_interval(segment, low=peaks.low, sigma=0.5)
    onset, apex, offset = a + lo + onset, a + int(top), a + lo + offset
    onset, offset = min(onset, apex), max(offset, apex)
    duration = (offset - onset + 1) / signal.fps
    if duration < peaks.min_s:
        return None
    kind = "micro" if duration <= peaks.micro_max_s else "macro"
    interval = SpottedInterval(
        int(signal.numbers[onset]),
        int(signal.numbers[apex]),
        int(signal.numbers[offset]),
        kind,
        round(float(run[top]), 3),
    )
    return _Peak(interval, onset, offset, run[top])


def _rejection(peak: MeasuredPeak, peaks: PeakSettings) -> Optional[str]:
    """Why the peak is not an expression, or None when it is one."""
    if peak.head > peaks.max_head:
        return "head movement"
    if peak.eyes > peaks.blink_ratio * peak.height:
        return "blink"
    if peaks.talk_peaks and syllables(peak.mouth) >= peaks.talk_peaks:
        return "talking"
    return None
