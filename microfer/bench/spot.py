"""The spotting benchmark: apex error (frames) on synthetic clips whose apex is known.

It lives with the benchmarks, not in `microfer.clip.apex`, because it runs the whole prepare
path (`prepare.prepare_clip`, which itself uses `apex`); `apex` stays a leaf the prepare
stage imports. The numbers it gave are in `microfer.clip.apex`'s docstring.
"""

from __future__ import annotations

import numpy as np

from microfer.clip.apex import DEFAULT_SPOT, SPOT_METHODS
from microfer.clip.prepare import PrepareSettings, prepare_clip
from microfer.synth import Camera, load_identities, make_clip_frames


def measure_spotting(
    n_clips: int = 24,
    method: str = DEFAULT_SPOT,
    seed: int = 0,
    frame_size: tuple[int, int] = (640, 480),
    n_frames: tuple[int, int] = (40, 100),
    camera: Camera | None = None,
) -> dict:
    """Spotting error (frames) on `microfer.synth` clips whose apex is known.

    Each clip is one expression from onset (frame 0) to offset (last frame), `n_frames`
    (min, max) long like CASME II's onset..offset spans, apex at 25-75 % of the span, micro
    amplitude (1.5-3 px at the apex), emotions and identities cycled, `camera` the synth
    nuisances (default `synth.Camera()`: sensor noise, sub-pixel head drift, flicker). The
    apex is not given to prepare_clip.
    """
    rng = np.random.default_rng(seed)
    scale = frame_size[1] / 480  # the CASME II layout's face widths, scaled to the frame
    identities = load_identities(
        min(n_clips, 8), frame_size=frame_size, face_width=(200 * scale, 280 * scale), seed=seed
    )
    emotions = ("happiness", "surprise", "disgust", "repression")
    settings = PrepareSettings(spot_method=method)
    errors, spotted, total_frames, timings = [], 0, 0, {}
    for i in range(n_clips):
        n = int(rng.integers(n_frames[0], n_frames[1] + 1))
        apex = int(rng.integers(int(0.25 * n), int(0.75 * n)))
        frames = make_clip_frames(
            identities[i % len(identities)],
            emotions[i % len(emotions)],
            n,
            0,
            apex,
            n - 1,
            float(rng.uniform(1.5, 3.0)),
            rng,
            camera or Camera(),
        )
        prepared = prepare_clip(frames, 0, None, n - 1, settings, timings=timings)
        total_frames += n
        spotted += prepared.apex_source == "spotted"
        errors.append(abs(prepared.apex - apex))
    errors = np.array(errors)
    return {
        "method": method,
        "clips": n_clips,
        "spotted": spotted,
        "errors": errors.tolist(),
        "mean_abs_frames": float(errors.mean()),
        "median_abs_frames": float(np.median(errors)),
        "max_abs_frames": int(errors.max()),
        "within_3": float((errors <= 3).mean()),
        "spot_ms_per_frame": timings.get("spot", 0.0) / max(1, total_frames),
    }


if __name__ == "__main__":  # python -m microfer.bench.spot
    import cv2

    cv2.setNumThreads(1)
    for m in SPOT_METHODS:
        print(measure_spotting(method=m))
