"""The two trivial spotting baselines spot-eval reports beside the method: a fixed threshold
on the curve, and evenly spaced guesses at the training subjects' rate."""

from __future__ import annotations

import numpy as np

from microfer.spotting.spot import MotionSignal, SpottedInterval, runs_of, spot_curves
from microfer.spotting.spot_scores import TYPES


def threshold_baseline(
    signal: MotionSignal, threshold: float, micro_max_s: float
) -> list[SpottedInterval]:
    """Trivial baseline: every run of frames whose curve is above a fixed threshold is an interval."""
    curve = spot_curves(signal)[0]
    out = []
    for a, b in runs_of(np.nan_to_num(curve, nan=-np.inf) > threshold):
        kind = "micro" if (b - a) / signal.fps <= micro_max_s else "macro"
        apex = a + int(np.argmax(curve[a:b]))
        out.append(
            SpottedInterval(
                int(signal.numbers[a]),
                int(signal.numbers[apex]),
                int(signal.numbers[b - 1]),
                kind,
                float(curve[apex]),
            )
        )
    return out


def spaced_baseline(
    n_frames_first: int,
    n_frames: int,
    fps: float,
    rates: dict[str, float],
    lengths: dict[str, float],
) -> list[SpottedInterval]:
    """Trivial baseline: per type, intervals of the training subjects' mean length, evenly spaced
    at the training subjects' rate (intervals per frame); no look at the video at all."""
    out = []
    for kind in TYPES:
        k = int(round(rates.get(kind, 0.0) * n_frames))
        length = max(1, int(round(lengths.get(kind, fps))))
        for j in range(k):
            centre = n_frames_first + int((j + 0.5) * n_frames / k)
            on = max(n_frames_first, centre - length // 2)
            out.append(SpottedInterval(on, centre, on + length - 1, kind, 0.0))
    return sorted(out, key=lambda iv: iv.onset)
