"""Dense optical flow and optical strain between two aligned grey faces.

Two OpenCV methods:
- "tvl1": Dual TV-L1 (Zach, Pock & Bischof 2007), cv2.optflow.DualTVL1OpticalFlow, default
  parameters. The usual choice in micro-expression work (Bi-WOOF, STSTNet, OFF-ApexNet...).
- "dis": Dense Inverse Search (Kroeger et al. 2016), cv2.DISOpticalFlow, MEDIUM preset with
  the finest scale set to full resolution (the preset stops at half resolution, which on a
  128-pixel face throws away the sub-pixel motion an ME is made of).

Measured on this machine (2 cores, OpenCV 5.0, cv2.setNumThreads(1)) with
`python -m microfer.bench.flow`: the 4 shipped faces (microfer/assets/faces), aligned to
128 x 128, moved by a known smooth displacement field (`expression_field`: brows up, mouth
corners out and up, cheeks up) of peak 0.5 / 1.5 / 3 px, grey noise sigma 1 on both
frames; endpoint error EPE = mean |flow - true flow| inside a 10 % border, mean of 4 faces:

    method            EPE @0.5px  EPE @1.5px  EPE @3px   ms / pair
    tvl1 (defaults)     0.043       0.085       0.126     ~320
    dis  (MEDIUM, f0)   0.037       0.063       0.094     ~8.5
    (dis MEDIUM at its preset finest scale 1: 0.054 / 0.132 / 0.196, 1.9 ms;
     tvl1 with 3 scales, 2 warps, 15/5 iterations: 0.036 / 0.080 / 0.128, ~125 ms)

DIS at full resolution is both more accurate (25 % lower EPE at ME amplitudes) and ~35x
faster, so the default is "dis". TV-L1 stays available (`method="tvl1"`) for comparison
with papers whose features were computed with it; at ~0.3 s per pair it alone would cap
a dataset run on 2 cores near 6 clips/s. Caveat: the test motion is smooth and brightness
constant; real ME clips add compression noise and flicker (DIS normalises patch means).

Optical strain follows Shreve et al. 2011 ("Macro- and micro-expression spotting in long
videos using spatio-temporal strain") and Liong et al. 2018 ("Less is more:
micro-expression recognition from video using apex frame", Signal Processing: Image
Communication 62): with flow (u, v) the infinitesimal strain tensor is
    e = 1/2 [grad(u, v) + grad(u, v)^T],  e_xx = du/dx, e_yy = dv/dy, e_xy = 1/2 (du/dy + dv/dx)
and its magnitude  |e| = sqrt(e_xx^2 + e_yy^2 + 2 e_xy^2)  (e_xy = e_yx, hence the 2),
with derivatives by central differences (np.gradient), in pixels/pixel.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from microfer.errors import MicroferError

FLOW_METHODS = ("tvl1", "dis")
DEFAULT_FLOW = "dis"


@lru_cache(maxsize=None)
def _tvl1():
    return cv2.optflow.DualTVL1OpticalFlow_create()


@lru_cache(maxsize=None)
def _dis():
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    return dis


def to_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.dtype != np.uint8:
        raise MicroferError(f"optical flow expects uint8 images, got {image.dtype}")
    return image


def optical_flow(a: np.ndarray, b: np.ndarray, method: str = DEFAULT_FLOW) -> np.ndarray:
    """Dense flow from `a` to `b` (grey or BGR uint8, same size): (H, W, 2) float32 (u, v) px.

    Convention: the content at pixel x of `a` is found at x + flow[x] in `b`.
    """
    a, b = to_gray(a), to_gray(b)
    if a.shape != b.shape:
        raise MicroferError(
            f"optical flow needs two images of one size, got {a.shape} and {b.shape}"
        )
    if method == "tvl1":
        flow = _tvl1().calc(a, b, None)
    elif method == "dis":
        flow = _dis().calc(a, b, None)
    else:
        raise MicroferError(
            f"unknown optical flow method '{method}'; expected one of {', '.join(FLOW_METHODS)}"
        )
    return np.ascontiguousarray(flow, dtype=np.float32)


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """Optical strain magnitude sqrt(e_xx^2 + e_yy^2 + 2 e_xy^2) of a (H, W, 2) flow, (H, W) float32."""
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise MicroferError(f"optical strain needs a (H, W, 2) flow, got shape {flow.shape}")
    u, v = flow[..., 0], flow[..., 1]
    du_dy, du_dx = np.gradient(u)
    dv_dy, dv_dx = np.gradient(v)
    exy = 0.5 * (du_dy + dv_dx)
    return np.sqrt(du_dx**2 + dv_dy**2 + 2.0 * exy**2).astype(np.float32)


def flow_magnitude(flow: np.ndarray) -> np.ndarray:
    return np.hypot(flow[..., 0], flow[..., 1]).astype(np.float32)


# --- measuring the methods -----------------------------------------------------------


def expression_field(size: int = 128, peak: float = 1.5) -> np.ndarray:
    """A smooth, face-like displacement field on the canonical aligned face, (S, S, 2) px.

    Gaussian bumps at the canonical brows (up), mouth corners (out and up) and cheeks (up),
    scaled so the largest displacement is `peak` pixels; used to test flow and spotting.
    """
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    field = np.zeros((size, size, 2))
    # (centre x, centre y, dx, dy, radius) in fractions of the side.
    bumps = [
        (0.32, 0.20, 0.0, -1.0, 0.08),
        (0.68, 0.20, 0.0, -1.0, 0.08),
        (0.34, 0.70, -0.7, -0.6, 0.07),
        (0.66, 0.70, 0.7, -0.6, 0.07),
        (0.30, 0.55, 0.0, -0.5, 0.09),
        (0.70, 0.55, 0.0, -0.5, 0.09),
    ]
    for cx, cy, dx, dy, r in bumps:
        g = np.exp(-((xx - cx * s) ** 2 + (yy - cy * s) ** 2) / (2 * (r * s) ** 2))
        field[..., 0] += dx * g
        field[..., 1] += dy * g
    field *= peak / np.hypot(field[..., 0], field[..., 1]).max()
    return field.astype(np.float32)


def apply_displacement(image: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the content of `image` by `field` (content at x goes to x + field[x]).

    Returns (moved image, exact flow image -> moved image = `field`). Pixel y of the result
    samples the image at y - g(y), where g(y) = field(y - g(y)) is found by fixed-point
    iteration (g is the field expressed at the destination).
    """
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = field.copy()
    for _ in range(20):
        g = np.stack(
            [
                cv2.remap(
                    field[..., k],
                    xx - g[..., 0],
                    yy - g[..., 1],
                    cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE,
                )
                for k in range(2)
            ],
            axis=-1,
        )
    moved = cv2.remap(
        image, xx - g[..., 0], yy - g[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    return moved, field.astype(np.float32)
