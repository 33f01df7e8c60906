"""The `prepare` benchmark: clips per second and milliseconds per stage.

By default it times a synthetic CASME II set written by `microfer.synth` (640 x 480 JPEG
frames, CASME-II-like onset..offset spans of 40-100 frames, ~66 on average in the real
set) and read back through the CASME II adapter, so the timed path is exactly the one a
real dataset takes: coding file -> manifest -> frame folders -> prepare.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd

# onset..offset spans of the default set (CASME II: 23-140 frames, ~66 on average)
CLIP_FRAMES = (40, 100)


def synthetic_casme2(out: Path, subjects: int = 4, clips_per_subject: int = 5, seed: int = 0,
                     clip_frames: tuple[int, int] = CLIP_FRAMES) -> pd.DataFrame:
    """Write a synthetic CASME II set under `out`; its manifest as the CASME II adapter reads it."""
    from microfer.datasets import get
    from microfer.synth import generate

    synth = generate("casme2", Path(out), subjects=subjects, clips_per_subject=clips_per_subject, seed=seed,
                     clip_frames=clip_frames, progress=False)
    return get("casme2").read(synth.coding_file, root=synth.root)


def bench_prepare(root: Path | None = None, samples: pd.DataFrame | None = None, settings=None,
                  workers: int = 2, subjects: int = 4, clips_per_subject: int = 5, seed: int = 0,
                  clip_frames: tuple[int, int] = CLIP_FRAMES, verbose: bool = True) -> dict:
    """Time `prepare` on a dataset (default: `synthetic_casme2(subjects, clips_per_subject, seed, clip_frames)`).

    Returns {"clips", "workers", "clips_per_s" (dataset run with `workers` processes, pool
    start-up included), "clips_per_s_steady" (same, start-up excluded), "one_process_s_per_clip",
    "failed", "ms": {stage: mean ms per clip in one process: decode, detect, landmarks, warp,
    spot, flow, total}}.
    """
    import cv2

    from microfer.prepare import PrepareSettings, prepare_clip, prepare_dataset
    from microfer.records import Sample
    from microfer.video import frames_for_sample

    settings = settings or PrepareSettings()
    with tempfile.TemporaryDirectory(prefix="microfer-bench-") as tmp:
        if root is None or samples is None:
            root = Path(tmp) / "data"
            samples = synthetic_casme2(root, subjects=subjects, clips_per_subject=clips_per_subject, seed=seed,
                                       clip_frames=clip_frames)
        sample_list = [Sample.from_row(r) for _, r in samples.iterrows()]

        cv2.setNumThreads(1)  # like a prepare worker: one process per core
        stages: dict[str, float] = {}
        first = sample_list[0]
        # load the face models outside the timing
        prepare_clip(frames_for_sample(root, first), first.onset, first.apex, first.offset, settings)
        t0 = time.perf_counter()
        for s in sample_list:
            prepare_clip(frames_for_sample(root, s), s.onset, s.apex, s.offset, settings, timings=stages)
        one = (time.perf_counter() - t0) / len(sample_list)
        ms = {k: v / len(sample_list) for k, v in stages.items()}
        ms["total"] = sum(ms.values())

        t0 = time.perf_counter()
        summary = prepare_dataset(samples, root, Path(tmp) / "cache", settings, workers=workers, progress=False)
        wall = time.perf_counter() - t0
    result = {"clips": len(sample_list), "workers": workers, "clips_per_s": len(sample_list) / wall,
              "clips_per_s_steady": summary.clips_per_s_steady, "one_process_s_per_clip": one,
              "failed": len(summary.failed), "ms": ms}
    if verbose:
        print(format_prepare(result))
    return result


def format_prepare(result: dict) -> str:
    ms = result["ms"]
    return (f"prepare: {result['clips']} clips, {result['workers']} workers: {result['clips_per_s']:.2f} clips/s "
            f"with start-up, {result['clips_per_s_steady']:.2f} clips/s steady"
            + (f", {result['failed']} failed" if result["failed"] else "") + "\n"
            "  per clip, one process: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))


if __name__ == "__main__":  # python -m microfer.bench_prepare
    bench_prepare()
