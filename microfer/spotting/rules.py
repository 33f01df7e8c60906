"""The rules that tell a spotted peak from an expression: head movement, talking (mouth
syllables, trains of micro intervals). Each measures plain arrays; stage 2
(`intervals.spot_intervals`) applies them with its PeakSettings."""

from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks

from microfer.spotting.signal import MotionSignal


def syllables(mouth: np.ndarray) -> int:
    """How many times the mouth curve rises to a peak of at least a quarter of its range."""
    mouth = mouth[~np.isnan(mouth)]
    if mouth.size < 3:
        return 0
    span = float(mouth.max() - mouth.min())
    return len(find_peaks(mouth, prominence=0.25 * span)[0]) if span > 0 else 0


def without_bursts(
    intervals: list, fps: float, burst: int, burst_gap_s: float, dropped: list
) -> list:
    """Drop runs of >= `burst` micro-length intervals separated by gaps < `burst_gap_s`:
    syllables of speech and chewing come in such trains, expressions hardly ever do."""
    if burst < 2 or not intervals:
        return intervals
    groups, current = [], [intervals[0]]
    for iv in intervals[1:]:
        prev = current[-1]
        if iv.type == prev.type == "micro" and (iv.onset - prev.offset) / fps < burst_gap_s:
            current.append(iv)
        else:
            groups.append(current)
            current = [iv]
    groups.append(current)
    kept = []
    for g in groups:
        if len(g) >= burst:
            dropped.extend((iv, "burst (talking, chewing)") for iv in g)
        else:
            kept.extend(g)
    return kept


def head_travel(signal: MotionSignal, onset: int, offset: int) -> float:
    """Largest distance of the face centre from its place at the onset, in eye distances."""
    pose = signal.head[onset : offset + 1].astype(np.float64)
    eyes = float(np.nanmedian(signal.eye_px[onset : offset + 1]))
    if not np.isfinite(eyes) or eyes <= 0:
        return 0.0
    moved = np.hypot(*(pose[:, :2] - pose[0, :2]).T) / eyes
    # a roll moves the face outline (~1.5 eye distances from the centre) by angle x radius
    turned = np.radians(np.abs(pose[:, 2] - pose[0, 2])) * 1.5
    return float(np.nanmax(moved + turned))


def without_tails(intervals: list, fps: float, tail_s: float, dropped: list) -> list:
    """Drop micro intervals that start within `tail_s` after a stronger macro interval ends, or
    end within `tail_s` before one starts: the rise or the return of the larger expression."""
    if tail_s <= 0:
        return intervals
    gap = tail_s * fps
    macros = [iv for iv in intervals if iv.type == "macro"]
    kept = []
    for iv in intervals:
        if iv.type == "micro" and any(
            m.score > iv.score
            and (0 <= iv.onset - m.offset <= gap or 0 <= m.onset - iv.offset <= gap)
            for m in macros
        ):
            dropped.append((iv, "tail of a macro-expression"))
        else:
            kept.append(iv)
    return kept
