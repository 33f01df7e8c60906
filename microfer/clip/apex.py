"""Apex (and onset/offset) spotting from facial motion.

Method (the frames are already aligned with ONE transform fitted on the onset frame, so a
change between two crops is facial motion, noise or residual head drift):
1. every aligned face is turned grey and blurred (Gaussian, sigma = size/64 px) so sensor
   noise and JPEG blocking average out while ME-sized motion (1-3 px) survives;
2. the motion of frame t is measured inside the regions where micro-expressions happen
   (`region_mask`: brows + eyes, nose, mouth; cheeks and hair edges, which move with the
   head and light, are left out) by one of:
   - "fd" (default): feature difference (Moilanen, Zhao, Pietikainen, ICPR 2014): mean
     |face_t - (face_{t-k} + face_{t+k}) / 2| with k = 0.3 x clip length. Slow head drift is
     close to linear over 2k frames and cancels; the rise and fall of an expression does not.
   - "diff": mean |face_t - face_onset| (motion relative to the onset);
   - "flow": mean DIS optical-flow magnitude vs the onset (~70x slower);
3. the curve is smoothed in time (Gaussian, sigma = max(1, n/30) frames) and the apex is
   the centre of the plateau around its maximum (frames above 90 % of the peak; see
   `spot_apex`), never the onset itself.

Measured with `python -m microfer.bench.spot` (`bench_spot.measure_spotting`, kept with the
benchmarks because it runs prepare, which imports this module): 24 `microfer.synth` clips of
640 x 480, 40-100 frames from onset to offset, apex at 25-75 % of the span, micro amplitude
1.5-3 px, 4 emotions, 8 identities from the shipped faces; the synth camera's sensor noise
(sigma 2), sub-pixel head drift (<= 0.3 px, 0.1 deg over the clip) and 0.4 % flicker:

    method   mean |error|  median  max  within 3 frames  ms per frame (128 px)
    fd       2.3 frames    1.5     11     79 %             0.16
    diff     6.5 frames    2       38     75 %             0.13
    flow     8.7 frames    2.5     41     58 %             11.3

With seeds 1 and 2 "fd" gave mean 3.4 / 3.9 (max 17 / 26) against 9.4 / 8.4 (max 49 / 42)
for "diff". Without head drift "diff" reaches mean 1.8, max 5: its large errors are drift,
which raises a motion-vs-onset curve steadily and pulls the apex towards the offset. The
expression stays within 5 % of its peak for about +-5 frames around the apex, so a couple
of frames is close to what any method can resolve (annotators of real datasets disagree by
as much).

`spot_interval` turns a curve into (onset, apex, offset) for a clip whose onset is not
known: apex = argmax, onset = the last low-motion frame before it, offset = the first
low-motion frame after it ("low" = below baseline + `low` x (peak - baseline)).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from microfer.clip.motion import flow_magnitude, optical_flow
from microfer.clip.regions import APEX_REGIONS, boxes
from microfer.clip.tracking import blur_sigma, grey_crop
from microfer.errors import ClipError

SPOT_METHODS = ("fd", "diff", "flow")
DEFAULT_SPOT = "fd"
FD_WINDOW = 0.3  # fd compares frame t with frames t +- FD_WINDOW x clip length

# the ME regions of an aligned face (one table for every use: microfer.clip.regions)
REGIONS = boxes(APEX_REGIONS)


@lru_cache(maxsize=8)
def region_mask(size: int = 128) -> np.ndarray:
    """Boolean (size, size) mask of the ME regions of an aligned face."""
    mask = np.zeros((size, size), bool)
    for x0, y0, x1, y1 in REGIONS.values():
        mask[int(y0 * size) : int(np.ceil(y1 * size)), int(x0 * size) : int(np.ceil(x1 * size))] = (
            True
        )
    mask.setflags(write=False)
    return mask


def motion_curve(
    faces: Sequence[np.ndarray],
    method: str = DEFAULT_SPOT,
    reference: int = 0,
    grey: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Raw (unsmoothed) motion of each aligned face relative to faces[reference], (n,) float32.

    `grey`: the faces as `tracking.grey_crop(face, blur_sigma(size))` when the caller has
    them already (prepare compares them with the onset's), else they are made here."""
    if len(faces) == 0:
        return np.zeros(0, np.float32)
    size = faces[0].shape[0]
    mask = region_mask(size)
    if method in ("fd", "diff") and grey is None:
        grey = [grey_crop(f, blur_sigma(size)) for f in faces]
    if method == "fd":
        # Feature difference (Moilanen et al., ICPR 2014): frame t against the mean of the
        # frames k before and k after it. Slow head drift is ~linear over 2k frames and
        # cancels; an expression that rises and falls inside the window does not.
        n, k = len(grey), max(2, int(round(FD_WINDOW * len(grey))))
        curve = np.array(
            [
                np.abs(grey[t] - (grey[max(0, t - k)] + grey[min(n - 1, t + k)]) / 2)[mask].mean()
                for t in range(n)
            ],
            np.float32,
        )
        curve[reference] = 0.0  # the onset is neutral by definition
        return curve
    if method == "diff":
        ref = grey[reference]
        return np.array([np.abs(g - ref)[mask].mean() for g in grey], np.float32)
    if method == "flow":
        ref = faces[reference]
        return np.array(
            [
                0.0 if i == reference else flow_magnitude(optical_flow(ref, f, "dis"))[mask].mean()
                for i, f in enumerate(faces)
            ],
            np.float32,
        )
    raise ClipError(
        f"unknown apex spotting method '{method}'; expected one of {', '.join(SPOT_METHODS)}"
    )


def smooth_curve(curve: np.ndarray, sigma: float | None = None) -> np.ndarray:
    curve = np.asarray(curve, np.float64)
    if curve.size < 3:
        return curve.astype(np.float32)
    sigma = max(1.0, curve.size / 30) if sigma is None else sigma
    return gaussian_smooth(curve, sigma)


def gaussian_smooth(curve: np.ndarray, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d(curve, sigma, mode="nearest") (truncate 4), in numpy:
    importing scipy.ndimage costs a one-clip `microfer predict` about 0.3 s."""
    radius = int(4.0 * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / float(sigma)) ** 2)
    padded = np.pad(np.asarray(curve, np.float64), radius, mode="edge")
    return np.convolve(padded, weights / weights.sum(), mode="valid").astype(np.float32)


def spot_apex(curve: np.ndarray, sigma: float | None = None, plateau: float = 0.9) -> int:
    """Index of the apex in a motion-vs-onset curve.

    The smoothed curve's peak is usually a plateau (an apex is held for several frames at
    200 fps) on which noise picks the argmax almost at random, so the apex is the centre
    (weighted by height above the level) of the run of frames around the argmax that stay
    above `plateau` x the peak (measured from the onset's level). The onset itself (index
    0) is never the apex: there is no motion relative to itself.
    """
    curve = np.asarray(curve)
    if curve.size < 2:
        raise ClipError(
            f"cannot spot an apex in {curve.size} frame(s): need onset and at least one more"
        )
    smooth = smooth_curve(curve, sigma).astype(np.float64)
    top = int(np.argmax(smooth[1:]) + 1)
    level = smooth[0] + plateau * (smooth[top] - smooth[0])
    lo = hi = top
    while lo > 1 and smooth[lo - 1] >= level:
        lo -= 1
    while hi < smooth.size - 1 and smooth[hi + 1] >= level:
        hi += 1
    weight = smooth[lo : hi + 1] - level
    if weight.sum() <= 0:
        return top
    return int(round(float((np.arange(lo, hi + 1) * weight).sum() / weight.sum())))


def spot_interval(
    curve: np.ndarray, low: float = 0.2, sigma: float | None = None
) -> tuple[int, int, int]:
    """(onset, apex, offset) indices of the main motion episode of a curve.

    apex = argmax of the smoothed curve; onset = last index before it where the motion is
    below baseline + low x (peak - baseline) (baseline = minimum before the apex), offset =
    first index after it below the same level measured against the minimum after it.
    """
    curve = np.asarray(curve)
    if curve.size < 3:
        raise ClipError(f"cannot spot an interval in {curve.size} frame(s)")
    smooth = smooth_curve(curve, sigma)
    apex = int(np.argmax(smooth))
    peak = float(smooth[apex])
    before, after = smooth[: apex + 1], smooth[apex:]
    level_before = float(before.min()) + low * (peak - float(before.min()))
    level_after = float(after.min()) + low * (peak - float(after.min()))
    below = np.flatnonzero(before <= level_before)
    onset = int(below[-1]) if below.size else 0
    below = np.flatnonzero(after <= level_after)
    offset = apex + int(below[0]) if below.size else curve.size - 1
    return onset, apex, offset
