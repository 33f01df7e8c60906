"""Accuracy and speed of the optical-flow methods on a known displacement
(`python -m microfer.bench.flow`; the numbers are in `microfer.clip.motion`'s docstring).
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from microfer.clip.face import alignment_transform, warp_face
from microfer.clip.motion import (
    FLOW_METHODS,
    apply_displacement,
    expression_field,
    optical_flow,
    to_gray,
)
from microfer.synth import load_identities


def flow_benchmark(
    faces: list[np.ndarray],
    peaks=(0.5, 1.5, 3.0),
    noise: float = 1.0,
    repeats: int = 3,
    seed: int = 0,
) -> dict:
    """EPE and speed of each flow method on aligned faces moved by `expression_field`.

    Returns {method: {peak: {"epe": px, "ms": per pair}}}, averaged over the faces; EPE is
    taken inside a 10 % border (borders have no texture to match, only replicate-padding).
    """
    rng = np.random.default_rng(seed)
    out: dict = {m: {} for m in FLOW_METHODS}
    for peak in peaks:
        sums = {m: [0.0, 0.0] for m in FLOW_METHODS}
        for face in faces:
            gray = to_gray(face)
            size = gray.shape[0]
            moved, true = apply_displacement(gray, expression_field(size, peak))
            a = np.clip(gray + rng.normal(0, noise, gray.shape), 0, 255).astype(np.uint8)
            b = np.clip(moved + rng.normal(0, noise, gray.shape), 0, 255).astype(np.uint8)
            m = size // 10
            for method in FLOW_METHODS:
                optical_flow(a, b, method)  # warm-up (allocations)
                t0 = time.perf_counter()
                for _ in range(repeats):
                    flow = optical_flow(a, b, method)
                sums[method][1] += (time.perf_counter() - t0) / repeats * 1000
                sums[method][0] += float(
                    np.hypot(*(flow - true).transpose(2, 0, 1))[m:-m, m:-m].mean()
                )
        for method, (epe, ms) in sums.items():
            out[method][peak] = {"epe": epe / len(faces), "ms": ms / len(faces)}
    return out


def _shipped_aligned_faces(size: int = 128) -> list[np.ndarray]:
    return [
        warp_face(i.image, alignment_transform(i.landmarks, size), size) for i in load_identities(4)
    ]


if (
    __name__ == "__main__"
):  # python -m microfer.bench.flow: the numbers in microfer.clip.motion's docstring
    cv2.setNumThreads(1)
    for method, rows in flow_benchmark(_shipped_aligned_faces()).items():
        print(
            method.ljust(5),
            "  ".join(
                f"peak {p:.1f}px: EPE {r['epe']:.3f} px, {r['ms']:.1f} ms" for p, r in rows.items()
            ),
        )
