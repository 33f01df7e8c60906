"""Training-time augmentation of face images for pretraining (never used at extraction).

One random similarity transform per face (scale, shift, small rotation: faces are never
perfectly centred, sized or upright, in FER-2013 or in a micro-expression crop) and a
brightness / contrast change (lighting differs between datasets). Left-right flips are
drawn separately by the training loop because they apply to every representation.

The parameters are DRAWN up front (`draw`) from the epoch's generator, so an epoch's
augmentation is a pure function of (seed, epoch) and a resumed run sees the same images.
"""

from __future__ import annotations

import numpy as np

# ranges (uniform): scale factor, shift as a fraction of the side, rotation in degrees,
# brightness as a fraction of full scale, contrast factor
SCALE = (0.9, 1.1)
SHIFT = 0.08
ROTATION_DEG = 10.0
BRIGHTNESS = 0.15
CONTRAST = (0.8, 1.2)
N_PARAMS = 6


def describe() -> dict:
    """The augmentation, for the weights card."""
    return {
        "scale": list(SCALE),
        "shift_fraction": SHIFT,
        "rotation_deg": ROTATION_DEG,
        "brightness_fraction": BRIGHTNESS,
        "contrast": list(CONTRAST),
        "horizontal_flip": 0.5,
        "applied_to": "image faces only (clip-derived inputs: flips only)",
    }


def draw(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 6) parameters: scale, dx, dy (fractions), angle (deg), brightness, contrast."""
    u = rng.random((n, N_PARAMS))
    out = np.empty_like(u)
    out[:, 0] = SCALE[0] + u[:, 0] * (SCALE[1] - SCALE[0])
    out[:, 1:3] = (u[:, 1:3] * 2 - 1) * SHIFT
    out[:, 3] = (u[:, 3] * 2 - 1) * ROTATION_DEG
    out[:, 4] = (u[:, 4] * 2 - 1) * BRIGHTNESS
    out[:, 5] = CONTRAST[0] + u[:, 5] * (CONTRAST[1] - CONTRAST[0])
    return out


def apply(face: np.ndarray, params: np.ndarray) -> np.ndarray:
    """One (S, S, 3) uint8 face -> augmented (S, S, 3) float32 on the same 0..255 scale.

    Float out: a second rounding to uint8 would throw away the small contrast changes.
    Borders are reflected, not black: a black wedge is a cue no real crop has.
    """
    import cv2

    scale, dx, dy, angle, brightness, contrast = (float(v) for v in params)
    h, w = face.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
    m[:, 2] += (dx * w, dy * h)
    out = cv2.warpAffine(
        face.astype(np.float32),
        m,
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    mean = out.mean()
    out = (out - mean) * contrast + mean + brightness * 255.0
    return np.clip(out, 0.0, 255.0)
