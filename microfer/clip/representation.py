"""A prepared clip -> the array a network sees: (C, H, W) float32, on a fixed scale.

Which representation works best is an empirical question, so it is a grid dimension of
`microfer loso`. Every kind gives 3 channels so the same ImageNet-shaped network
(in_chans=3) serves all of them, and every scale below is FIXED (never per-clip
statistics): the magnitude of a micro-movement is information, and a per-clip
normalisation would blow noise in a still clip up to the size of a real movement.

kinds
  apex        the apex face, BGR -> RGB, ImageNet mean/std normalised
  onset_apex  onset grey, apex grey (both standardised), and the apex - onset difference
              amplified by DIFF_SCALE (micro-expressions change a few grey levels)
  flow        u, v (pixels, rescaled to a 128-px face so the range does not depend on the
              crop size) and optical strain times STRAIN_SCALE; clipped to +-CLIP.
              Entries with flow_units "minmax_per_image" (circulated derived inputs whose
              u, v, strain were each min-max scaled to 0..1 per image before we got them)
              have no pixel scale left to restore: each channel x maps to 2*x - 1, a fixed
              map onto [-1, 1], adding no per-clip statistics to what the file already did.
              Mirroring stays exact for them: -(2x - 1) = 2(1 - x) - 1, and 1 - x is the
              per-image min-max of -u.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from microfer.errors import ClipError
from microfer.records import PreparedClip

KINDS = ("apex", "onset_apex", "flow")
FLOW_UNITS = ("pixels", "minmax_per_image")

IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)
GREY_MEAN, GREY_STD = 0.5, 0.25
DIFF_SCALE = 8.0  # (apex - onset)/255 * 8: a 32-grey-level change reads as 1.0
FLOW_REFERENCE = 128.0  # flow is expressed in pixels of a 128-px face
STRAIN_SCALE = 10.0  # strain of 0.1 (a strong micro-movement) reads as 1.0
CLIP = 5.0  # bound outliers (flow failures at the crop border)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(
            f"unknown input representation {kind!r}; expected one of {', '.join(KINDS)}"
        )
    return kind


def _grey(face_bgr: np.ndarray) -> np.ndarray:
    face = face_bgr.astype(np.float32) / 255.0
    # ITU-R BT.601 luma, the same weights cv2.cvtColor uses for BGR2GRAY
    return 0.114 * face[..., 0] + 0.587 * face[..., 1] + 0.299 * face[..., 2]


def _check_face(face: np.ndarray, what: str, name: str) -> np.ndarray:
    face = np.asarray(face)
    if face.ndim == 2:
        face = np.repeat(face[..., None], 3, axis=2)
    if face.ndim != 3 or face.shape[2] != 3 or face.shape[0] == 0 or face.shape[1] == 0:
        raise ClipError(f"{name}: {what} must be an (S, S, 3) BGR image, got shape {face.shape}")
    return face


def face_to_input(face_bgr: np.ndarray, name: str = "image") -> np.ndarray:
    """One face image (H, W, 3) uint8 BGR or (H, W) grey -> the 'apex' input (3, H, W)."""
    face = _check_face(face_bgr, "face", name)
    rgb = face[..., ::-1].astype(np.float32) / 255.0
    rgb = (rgb - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


def to_input(prepared: PreparedClip, kind: str, name: str = "clip") -> np.ndarray:
    """A prepared clip -> (3, S, S) float32 network input of representation `kind`."""
    check_kind(kind)
    if kind == "apex":
        return face_to_input(prepared.apex_face, name)
    if kind == "onset_apex":
        if np.asarray(prepared.onset_face).size == 0:
            raise ClipError(
                f"{name}: the entry has no onset face ({prepared.apex_source} entries carry the apex "
                f"frame and flow only); use the apex or flow representation"
            )
        onset = _grey(_check_face(prepared.onset_face, "onset_face", name))
        apex = _grey(_check_face(prepared.apex_face, "apex_face", name))
        if onset.shape != apex.shape:
            raise ClipError(
                f"{name}: onset face {onset.shape} and apex face {apex.shape} differ in size"
            )
        diff = np.clip((apex - onset) * DIFF_SCALE, -CLIP, CLIP)
        out = np.stack([(onset - GREY_MEAN) / GREY_STD, (apex - GREY_MEAN) / GREY_STD, diff])
        return out.astype(np.float32)
    flow = np.asarray(prepared.flow, dtype=np.float32)
    strain = np.asarray(prepared.strain, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ClipError(f"{name}: flow must be (S, S, 2), got shape {flow.shape}")
    if strain.shape != flow.shape[:2]:
        raise ClipError(f"{name}: strain {strain.shape} does not match flow {flow.shape[:2]}")
    units = prepared.flow_units
    if units == "minmax_per_image":
        out = np.stack([flow[..., 0], flow[..., 1], strain]) * 2.0 - 1.0
        return np.clip(np.nan_to_num(out, nan=0.0), -1.0, 1.0).astype(np.float32)
    if units != "pixels":
        raise ClipError(
            f"{name}: unknown flow_units {units!r}; expected one of {', '.join(FLOW_UNITS)}"
        )
    scale = FLOW_REFERENCE / float(flow.shape[1])
    out = np.stack([flow[..., 0] * scale, flow[..., 1] * scale, strain * STRAIN_SCALE])
    out = np.nan_to_num(out, nan=0.0, posinf=CLIP, neginf=-CLIP)
    return np.clip(out, -CLIP, CLIP).astype(np.float32)


def stack_inputs(
    prepared: Sequence[PreparedClip], kind: str, names: Sequence[str] | None = None
) -> np.ndarray:
    """Many prepared clips -> (N, 3, S, S) float32; all clips must share the crop size."""
    check_kind(kind)
    if len(prepared) == 0:
        return np.zeros((0, 3, 0, 0), np.float32)
    names = list(names) if names is not None else [f"clip #{i}" for i in range(len(prepared))]
    arrays = [to_input(p, kind, n) for p, n in zip(prepared, names)]
    first = arrays[0].shape
    for a, n in zip(arrays, names):
        if a.shape != first:
            raise ClipError(
                f"{n}: input shape {a.shape} differs from {first} of {names[0]} (mixed crop sizes)"
            )
    return np.stack(arrays)


def flip_input(x: np.ndarray, kind: str) -> np.ndarray:
    """Mirror inputs (..., C, H, W) left-right; for flow the horizontal component changes sign.

    Used as a training augmentation by pretraining: a mirrored face moving left is a
    face moving right, so u must be negated, v and strain stay.
    """
    check_kind(kind)
    out = x[..., ::-1].copy()
    if kind == "flow":
        out[..., 0, :, :] *= -1.0
    return out
