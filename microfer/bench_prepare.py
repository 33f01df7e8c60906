"""Synthetic clips with a known apex, and the `prepare` benchmark.

`synthetic_clip` moves a real face photo by a smooth expression-like displacement field
whose strength rises from the onset to a known apex and falls back by the offset, with
small head jitter and sensor noise: enough realism to measure apex spotting and to time
the preparation stage on frames of a real dataset's size (CASME II: 640 x 480, clips of
~66 frames onset..offset on average, 23-140).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from microfer.records import MANIFEST_COLUMNS


@dataclass
class SyntheticClip:
    frames: list[np.ndarray]   # BGR uint8, frame i = number i
    apex: int                  # index of the true apex
    amplitude: np.ndarray      # (n,) expression strength per frame, 0..1


@lru_cache(maxsize=1)
def shipped_faces() -> tuple[np.ndarray, ...]:
    """The real face photos that ship with microfer (public domain, see assets/faces)."""
    folder = Path(__file__).parent / "assets" / "faces"
    return tuple(cv2.imread(str(p)) for p in sorted(folder.glob("*.jpg")))


def place_face(face: np.ndarray, frame_size=(640, 480)) -> np.ndarray:
    """A frame_size (w, h) canvas holding the photo scaled to the frame height, centred."""
    w, h = frame_size
    scale = h / face.shape[0]
    resized = cv2.resize(face, (max(1, round(face.shape[1] * scale)), h), interpolation=cv2.INTER_AREA)
    pad = w - resized.shape[1]
    if pad >= 0:
        return cv2.copyMakeBorder(resized, 0, 0, pad // 2, pad - pad // 2, cv2.BORDER_REPLICATE)
    return resized[:, -pad // 2: -pad // 2 + w]


def _image_field(canvas: np.ndarray, peak: float) -> np.ndarray:
    """motion.expression_field drawn in image coordinates of the face on `canvas`."""
    from microfer.face import alignment_transform, detect_landmarks
    from microfer.motion import expression_field

    lm = detect_landmarks(canvas)
    if lm is None:
        raise ValueError("no face on the synthetic canvas")
    size = 128
    M = alignment_transform(lm.points, size).astype(np.float64)
    h, w = canvas.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Where each image pixel falls in the aligned crop; sample the aligned field there and
    # bring the displacement vectors back to image scale with the inverse linear part.
    ax = (M[0, 0] * xx + M[0, 1] * yy + M[0, 2]).astype(np.float32)
    ay = (M[1, 0] * xx + M[1, 1] * yy + M[1, 2]).astype(np.float32)
    f = expression_field(size, 1.0)
    fa = np.stack([cv2.remap(f[..., k], ax, ay, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                   for k in range(2)], axis=-1)
    inv = np.linalg.inv(M[:, :2])
    field = fa @ inv.T
    return (field * (peak / max(1e-6, np.hypot(field[..., 0], field[..., 1]).max()))).astype(np.float32)


def synthetic_clip(face: np.ndarray, n_frames: int, apex: int, frame_size=(640, 480), peak: float = 2.5,
                   jitter: float = 0.1, noise: float = 1.5, seed: int = 0) -> SyntheticClip:
    """n_frames frames of `face` making one expression that peaks at frame `apex`.

    Strength rises as a half cosine from 0 (frame 0) to 1 (apex) and falls back to 0 by
    the last frame; `peak` is the largest displacement in image pixels, `jitter` the
    standard deviation of a per-frame global shift (px), `noise` of grey-level noise.
    """
    if not 0 < apex < n_frames - 1:
        raise ValueError(f"apex {apex} must lie strictly inside 0..{n_frames - 1}")
    rng = np.random.default_rng(seed)
    canvas = place_face(face, frame_size)
    field = _image_field(canvas, peak)
    t = np.arange(n_frames, dtype=np.float64)
    amp = np.where(t <= apex, 0.5 - 0.5 * np.cos(np.pi * t / apex),
                   0.5 + 0.5 * np.cos(np.pi * (t - apex) / (n_frames - 1 - apex)))
    h, w = canvas.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i, a in enumerate(amp):
        shift = rng.normal(0, jitter, 2) if i else np.zeros(2)
        # First-order backward map: sub-pixel fields make the inversion error negligible.
        mx = xx - a * field[..., 0] - shift[0]
        my = yy - a * field[..., 1] - shift[1]
        frame = cv2.remap(canvas, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        frame += noise * rng.standard_normal(frame.shape, dtype=np.float32)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return SyntheticClip(frames, apex, amp.astype(np.float32))


def write_synthetic_set(out: Path, n_clips: int = 20, frame_size=(640, 480), apex_unknown: float = 0.0,
                        first_number: int = 1, seed: int = 0) -> pd.DataFrame:
    """Write CASME-II-like clips (folders of img<n>.jpg) under `out`; their manifest rows.

    Clip lengths follow CASME II (40-100 frames onset..offset); frame numbers start at
    `first_number`; a share `apex_unknown` of the rows has no apex annotation.
    """
    rng = np.random.default_rng(seed)
    faces = shipped_faces()
    rows = []
    for i in range(n_clips):
        n = int(rng.integers(40, 101))
        apex = int(rng.integers(int(0.25 * n), int(0.75 * n)))
        clip = synthetic_clip(faces[i % len(faces)], n, apex, frame_size, seed=seed * 1000 + i)
        subject, name = f"sub{i % 3 + 1:02d}", f"EP{i:02d}_01"
        folder = Path(out) / subject / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate(clip.frames):
            cv2.imwrite(str(folder / f"img{first_number + k}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
        known = rng.random() >= apex_unknown
        rows.append({"dataset": "synthetic", "subject": subject, "clip": name, "onset": first_number,
                     "apex": first_number + apex if known else None, "offset": first_number + n - 1,
                     "emotion": "happiness", "label": "positive",
                     "frame_template": f"{subject}/{name}/img{{frame}}.jpg", "fps": 200.0,
                     "notes": "" if known else f"true apex {first_number + apex}"})
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def bench_prepare(root: Path | None = None, samples: pd.DataFrame | None = None, settings=None,
                  workers: int = 2, n_clips: int = 20, verbose: bool = True) -> dict:
    """Time `prepare` on a dataset (default: a synthetic CASME-II-sized set, 640 x 480).

    Returns {"clips", "workers", "clips_per_s" (dataset run with `workers` processes, pool
    start-up included), "clips_per_s_steady" (same, start-up excluded), "ms": {stage: mean
    ms per clip in one process: decode, detect, landmarks, warp, spot, flow, total}}.
    """
    from microfer.prepare import PrepareSettings, prepare_clip, prepare_dataset
    from microfer.records import Sample
    from microfer.video import frames_for_sample

    settings = settings or PrepareSettings()
    with tempfile.TemporaryDirectory(prefix="microfer-bench-") as tmp:
        if root is None or samples is None:
            root = Path(tmp) / "data"
            samples = write_synthetic_set(root, n_clips=n_clips)
        sample_list = [Sample.from_row(r) for _, r in samples.iterrows()]

        cv2.setNumThreads(1)
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        prepare_clip(frames_for_sample(root, sample_list[0]), sample_list[0].onset, sample_list[0].apex,
                     sample_list[0].offset, settings)  # load models outside the timing
        for s in sample_list:
            prepare_clip(frames_for_sample(root, s), s.onset, s.apex, s.offset, settings, timings=stages)
        ms = {k: v / len(sample_list) for k, v in stages.items()}
        ms["total"] = sum(ms.values())
        one = (time.perf_counter() - t0) / len(sample_list)

        t0 = time.perf_counter()
        summary = prepare_dataset(samples, root, Path(tmp) / "cache", settings, workers=workers, progress=False)
        wall = time.perf_counter() - t0
    result = {"clips": len(sample_list), "workers": workers, "clips_per_s": len(sample_list) / wall,
              "clips_per_s_steady": summary.clips_per_s_steady, "one_process_s_per_clip": one,
              "failed": len(summary.failed), "ms": ms}
    if verbose:
        print(f"prepare: {result['clips']} clips, {workers} workers: {result['clips_per_s']:.2f} clips/s "
              f"(steady {result['clips_per_s_steady']:.2f} clips/s)")
        print("  per clip, one process: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))
    return result


if __name__ == "__main__":  # python -m microfer.bench_prepare
    bench_prepare()
