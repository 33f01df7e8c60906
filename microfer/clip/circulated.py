"""The circulated STSTNet flow representation, computed from frames (`PrepareSettings.flow_format`).

The MEGC2019 composite inputs that circulate among researchers (read by
`microfer.datasets.composite_inputs`) hold one 28x28x3 image per clip. What they are, from
the STSTNet paper (Liong et al., FG 2019: TV-L1 optical flow between the onset and apex
frames of the face crop, the optical strain of that flow, all resized to 28x28) and from
the 207 files themselves:
- channels u (horizontal), v (vertical), optical strain; in the PNG's RGB order (cv2 reads
  them as strain, v, u) -- see the composite_inputs docstring for the evidence;
- min-max scaled to 0..255 PER CHANNEL PER IMAGE AFTER the resize: every channel of all
  207 files reaches both 0 and 255, which a resize after the scaling would not leave
  (area or bicubic shrinking pulls the extremes in);
- the strain was computed on the flow BEFORE the resize: strain recomputed from the stored
  28x28 u, v agrees with the stored strain only to a correlation of 0.87 on average;
- geometry: the flow image covers the same face crop as the circulated apex image (HTNet,
  which redistributes them, crops flow blocks at the apex image's landmarks scaled to 28 px).
  That crop is tighter than microfer's aligned face and stretched sideways: dlib landmarks
  on the 207 circulated apex crops (`python -m microfer.bench.circulated crop`) put the
  eye centres at x 0.231 / 0.757, y 0.286, the mouth corners at y 0.744 (medians; eye
  distance 0.52 of the side against 0.36 in microfer's `face.CANONICAL_POINTS`). Mapped
  through the eyes (x) and the eye-to-mouth height (y), the circulated crop is the box
  `CIRCULATED_CROP` of microfer's aligned face, which is cut out before the resize.

microfer's version: TV-L1 (`PrepareSettings.flow = "tvl1"`, OpenCV's Dual TV-L1 with its
defaults; the interpolation and TV-L1 parameters of the original Matlab pipeline are not
published) on microfer's aligned onset/apex faces, strain by `motion.optical_strain`, both cut to
`CIRCULATED_CROP`, area resize to 28x28, per-channel min-max to 0..255, rounded to whole grey levels as a PNG
stores them, then /255: entries with flow_units "minmax_per_image", exactly like those read
from the circulated files. The agreement with the recipe is measured in
docs/circulated-inputs.md (`python -m microfer.bench.circulated`).
"""

from __future__ import annotations

import cv2
import numpy as np

from microfer.errors import MicroferError

FLOW_FORMATS = ("pixels", "minmax28")
DEFAULT_FLOW_FORMAT = "pixels"
CIRCULATED_SIZE = 28
# (x0, y0, x1, y1) in fractions of microfer's aligned face: where the circulated crop lies
# (module docstring). x: eyes 0.231/0.757 there, 0.32/0.68 here; y: eyes 0.286 and mouth
# 0.744 there, 0.32 and 0.70 here. A stretch differing between x and y changes u and v only
# by a factor each, which the per-channel min-max removes.
CIRCULATED_CROP = (0.162, 0.083, 0.846, 0.913)
# what each flow format gives PreparedClip.flow_units (representation.FLOW_UNITS)
FLOW_UNITS_OF = {"pixels": "pixels", "minmax28": "minmax_per_image"}


def check_flow_format(name: str) -> str:
    if name not in FLOW_FORMATS:
        raise MicroferError(
            f"unknown flow format '{name}'; expected one of {', '.join(FLOW_FORMATS)}"
        )
    return name


def minmax_uint8(channel: np.ndarray) -> np.ndarray:
    """One channel min-max scaled to 0..255 and rounded (uint8); a flat channel gives 0
    (what cv2.normalize(NORM_MINMAX) does, and a file of one grey level would hold)."""
    x = np.asarray(channel, np.float64)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12:
        return np.zeros(x.shape, np.uint8)
    return np.rint((x - lo) / (hi - lo) * 255.0).astype(np.uint8)


def circulated_image(flow: np.ndarray, strain: np.ndarray, size: int = CIRCULATED_SIZE):
    """(size, size, 3) uint8 image u, v, strain (RGB order of the circulated PNGs) from a
    full-resolution flow (H, W, 2) in pixels and its strain (H, W)."""
    flow = np.asarray(flow, np.float32)
    strain = np.asarray(strain, np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2 or strain.shape != flow.shape[:2]:
        raise MicroferError(
            f"the circulated representation needs a (H, W, 2) flow and its (H, W) strain, "
            f"got {flow.shape} and {strain.shape}"
        )
    h, w = strain.shape
    x0, y0, x1, y1 = CIRCULATED_CROP
    rows = slice(int(round(y0 * h)), max(int(round(y1 * h)), int(round(y0 * h)) + 1))
    cols = slice(int(round(x0 * w)), max(int(round(x1 * w)), int(round(x0 * w)) + 1))
    channels = [flow[rows, cols, 0], flow[rows, cols, 1], strain[rows, cols]]
    small = [cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in channels]
    return np.stack([minmax_uint8(c) for c in small], axis=2)


def circulated_flow(flow: np.ndarray, strain: np.ndarray, size: int = CIRCULATED_SIZE):
    """(flow (size, size, 2) u, v in 0..1, strain (size, size) in 0..1) float32: the values a
    circulated file read by `composite_inputs.read_flow_image` gives, from a pixel flow."""
    x = circulated_image(flow, strain, size).astype(np.float32) / 255.0
    return np.ascontiguousarray(x[..., :2]), np.ascontiguousarray(x[..., 2])
