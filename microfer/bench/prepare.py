"""The `prepare` benchmark: clips per second and milliseconds per stage.

By default it times a synthetic CASME II set written by `microfer.synth` (640 x 480 JPEG
frames, CASME-II-like onset..offset spans of 40-100 frames, ~66 on average in the real
set) and read back through the CASME II adapter, so the timed path is exactly the one a
real dataset takes: coding file -> manifest -> frame folders -> prepare.

Next to it, on the same clips, in the same run and with the same number of worker
processes, it times a bare baseline (`bare_clip`): for each clip cv2.imread of the onset
and apex frames, dlib's frontal detector and 68-point predictor on the onset frame, a
similarity warp (eye centres) of both frames to `size` px with cv2.warpAffine, and DIS
flow configured as microfer.clip.motion's default (MEDIUM, finest scale 0) -- nothing else: no
spotting, no apex face check, no strain, no cache. Both throughputs include start-up
(process pool start, imports and dlib model loading in the workers); the goal is
prepare >= GOAL_PREPARE_RATIO x bare. Steady rates (after the first clip) of
both are reported too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from microfer.datasets import get
from microfer.records import Sample

if TYPE_CHECKING:
    import pandas as pd

# pandas, cv2, dlib and microfer's own modules are imported where used: bare-baseline
# workers import this module (spawn) and should load no more than the bare script would.

# onset..offset spans of the default set (CASME II: 23-140 frames, ~66 on average)
CLIP_FRAMES = (40, 100)
GOAL_PREPARE_RATIO = 0.5  # goal: prepare throughput >= 1/2 of the bare dlib + DIS script


def synthetic_casme2(
    out: Path,
    subjects: int = 4,
    clips_per_subject: int = 5,
    seed: int = 0,
    clip_frames: tuple[int, int] = CLIP_FRAMES,
) -> pd.DataFrame:
    """Write a synthetic CASME II set under `out`; its manifest as the CASME II adapter reads it."""
    from microfer.synth import generate

    synth = generate(
        "casme2",
        Path(out),
        subjects=subjects,
        clips_per_subject=clips_per_subject,
        seed=seed,
        clip_frames=clip_frames,
        progress=False,
    )
    return get("casme2").read(synth.coding_file, root=synth.root)


# ---- the bare baseline: dlib + DIS, nothing else ---------------------------------------------

_BARE: dict = {}


def _bare_init() -> None:
    """Bare worker start-up: one OpenCV thread (like a prepare worker), dlib models, DIS."""
    import cv2
    import dlib

    from microfer.clip.face import landmark_model_path  # the model file's path only

    cv2.setNumThreads(1)
    if not _BARE:
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        dis.setFinestScale(0)  # as microfer.clip.motion's default "dis"
        _BARE.update(
            detector=dlib.get_frontal_face_detector(),
            predictor=dlib.shape_predictor(str(landmark_model_path())),
            dis=dis,
        )


def bare_clip(onset_file, apex_file, size: int = 128):
    """The bare script on one clip: onset -> apex flow (size, size, 2) float32, or None (no face)."""
    import cv2
    import dlib
    import numpy as np

    _bare_init()
    onset = cv2.imread(str(onset_file), cv2.IMREAD_GRAYSCALE)
    apex = cv2.imread(str(apex_file), cv2.IMREAD_GRAYSCALE)
    rects = _BARE["detector"](onset, 0)
    if len(rects) == 0:
        return None
    rect = max(rects, key=lambda r: r.width() * r.height())
    shape = _BARE["predictor"](
        onset, dlib.rectangle(rect.left(), rect.top(), rect.right(), rect.bottom())
    )
    pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
    # similarity putting the eye centres at (0.32, 0.32) and (0.68, 0.32) of the crop
    left, right = pts[36:42].mean(0), pts[42:48].mean(0)
    dx, dy = right - left
    scale = 0.36 * size / max(float(np.hypot(dx, dy)), 1e-6)
    M = cv2.getRotationMatrix2D(
        (float(left[0]), float(left[1])), float(np.degrees(np.arctan2(dy, dx))), scale
    )
    M[:, 2] += np.array([0.32 * size, 0.32 * size]) - left
    a = cv2.warpAffine(
        onset, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    b = cv2.warpAffine(
        apex, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return _BARE["dis"].calc(a, b, None)


def bare_pairs(root: Path, samples) -> list[tuple[str, str]]:
    """(onset file, apex file) of each sample of a frame-folder dataset (apex: annotated, else
    the middle of onset..offset); resolved before any timing."""
    from microfer.clip.video import frames_for_sample

    pairs = []
    for s in (
        samples
        if isinstance(samples, list)
        else [Sample.from_row(r) for _, r in samples.iterrows()]
    ):
        source = frames_for_sample(Path(root), s)
        apex = s.apex if s.apex is not None else (s.onset + s.offset) // 2
        pairs.append((str(source.file(s.onset)), str(source.file(apex))))
    return pairs


def bench_bare(
    pairs: list[tuple[str, str]], workers: int = 2, size: int = 128, return_flows: bool = False
) -> dict:
    """Time `bare_clip` on every (onset file, apex file) pair with `workers` processes (spawned
    like prepare's; one worker: in this process), start-up included.

    Returns {"clips", "workers", "clips_per_s" (start-up included), "clips_per_s_steady"
    (after the first clip completed), "seconds", "failed" (no face)} and, with
    `return_flows`, "flows" (one array or None per pair, in order; not for JSON).
    """
    flows: list = [None] * len(pairs)
    done_at: list[float] = []
    t0 = time.perf_counter()
    if workers <= 1 or len(pairs) <= 1:
        for i, (a, b) in enumerate(pairs):
            flows[i] = bare_clip(a, b, size)
            done_at.append(time.perf_counter())
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(workers, len(pairs)), mp_context=ctx, initializer=_bare_init
        ) as pool:
            futures = {pool.submit(bare_clip, a, b, size): i for i, (a, b) in enumerate(pairs)}
            for fut in as_completed(futures):
                flows[futures[fut]] = fut.result()
                done_at.append(time.perf_counter())
    wall = time.perf_counter() - t0
    n = len(pairs)
    steady = (n - 1) / max(1e-9, done_at[-1] - done_at[0]) if n > 1 else 0.0
    result = {
        "clips": n,
        "workers": workers,
        "clips_per_s": n / wall if wall > 0 else 0.0,
        "clips_per_s_steady": steady,
        "seconds": wall,
        "failed": sum(f is None for f in flows),
    }
    if return_flows:
        result["flows"] = flows
    return result


def _time_one_process(root: Path, sample_list: list, settings) -> tuple[float, dict[str, float]]:
    """Seconds per clip and mean ms per stage of `prepare_clip` in this process, one thread."""
    import cv2

    from microfer.clip.prepare import prepare_clip
    from microfer.clip.video import frames_for_sample

    cv2.setNumThreads(1)  # like a prepare worker: one process per core
    stages: dict[str, float] = {}
    first = sample_list[0]
    # load the face models outside the timing
    prepare_clip(frames_for_sample(root, first), first.onset, first.apex, first.offset, settings)
    t0 = time.perf_counter()
    for s in sample_list:
        prepare_clip(
            frames_for_sample(root, s), s.onset, s.apex, s.offset, settings, timings=stages
        )
    one = (time.perf_counter() - t0) / len(sample_list)
    ms = {k: v / len(sample_list) for k, v in stages.items()}
    ms["total"] = sum(ms.values())
    return one, ms


def _time_dataset(samples, root: Path, cache: Path, settings, workers: int):
    """Wall seconds of `prepare_dataset` with `workers` processes (pool start-up included), and
    its summary."""
    from microfer.clip.prepare import prepare_dataset

    t0 = time.perf_counter()
    summary = prepare_dataset(samples, root, cache, settings, workers=workers, progress=False)
    return time.perf_counter() - t0, summary


def _add_bare(result: dict, bare: dict) -> None:
    """The bare script's run, the ratios to it and the goal, into `result`."""
    from microfer.bench.suite import goal_entry

    ratio = result["clips_per_s"] / bare["clips_per_s"] if bare["clips_per_s"] > 0 else 0.0
    result["bare"] = bare
    result["ratio_to_bare"] = ratio
    result["ratio_to_bare_steady"] = (
        result["clips_per_s_steady"] / bare["clips_per_s_steady"]
        if bare["clips_per_s_steady"] > 0
        else 0.0
    )
    result["goals"] = {
        "prepare_vs_bare": goal_entry(
            "prepare clips/s / bare dlib + DIS script's (start-up in both)",
            ratio,
            GOAL_PREPARE_RATIO,
            "x",
            higher_is_better=True,
        )
    }


def bench_prepare(
    root: Path | None = None,
    samples: pd.DataFrame | None = None,
    settings=None,
    workers: int = 2,
    subjects: int = 4,
    clips_per_subject: int = 5,
    seed: int = 0,
    clip_frames: tuple[int, int] = CLIP_FRAMES,
    baseline: bool = True,
    verbose: bool = True,
) -> dict:
    """Time `prepare` on a dataset (default: `synthetic_casme2(subjects, clips_per_subject, seed, clip_frames)`).

    Returns {"clips", "workers", "clips_per_s" (dataset run with `workers` processes, pool
    start-up included), "clips_per_s_steady" (same, start-up excluded), "one_process_s_per_clip",
    "failed", "ms": {stage: mean ms per clip in one process: decode, detect, landmarks, warp,
    spot, flow, total}}; with `baseline` also "bare" (`bench_bare` on the same clips, same
    workers), "ratio_to_bare" (clips/s with start-up, prepare / bare), "ratio_to_bare_steady"
    and "goals": {"prepare_vs_bare": {"goal", "value", "met"}}.
    """
    from microfer.clip.prepare import PrepareSettings

    settings = settings or PrepareSettings()
    with tempfile.TemporaryDirectory(prefix="microfer-bench-") as tmp:
        if root is None or samples is None:
            root = Path(tmp) / "data"
            samples = synthetic_casme2(
                root,
                subjects=subjects,
                clips_per_subject=clips_per_subject,
                seed=seed,
                clip_frames=clip_frames,
            )
        sample_list = [Sample.from_row(r) for _, r in samples.iterrows()]
        one, ms = _time_one_process(root, sample_list, settings)
        wall, summary = _time_dataset(samples, root, Path(tmp) / "cache", settings, workers)
        bare = (
            bench_bare(bare_pairs(root, sample_list), workers=workers, size=settings.size)
            if baseline
            else None
        )
    result = {
        "clips": len(sample_list),
        "workers": workers,
        "clips_per_s": len(sample_list) / wall,
        "clips_per_s_steady": summary.clips_per_s_steady,
        "one_process_s_per_clip": one,
        "failed": len(summary.failed),
        "ms": ms,
    }
    if bare is not None:
        _add_bare(result, bare)
    if verbose:
        print(format_prepare(result))
    return result


def format_prepare(result: dict) -> str:
    ms = result["ms"]
    return (
        f"prepare: {result['clips']} clips, {result['workers']} workers: {result['clips_per_s']:.2f} clips/s "
        f"with start-up, {result['clips_per_s_steady']:.2f} clips/s steady"
        + (f", {result['failed']} failed" if result["failed"] else "")
        + "\n"
        "  per clip, one process: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
        + (format_bare(result) if "bare" in result else "")
    )


def format_bare(result: dict) -> str:
    from microfer.bench.suite import format_goals

    bare, goal = result["bare"], result["goals"]["prepare_vs_bare"]
    return (
        "\n"
        f"bare dlib + DIS script, same {bare['clips']} clips, {bare['workers']} workers: "
        f"{bare['clips_per_s']:.2f} clips/s with start-up, {bare['clips_per_s_steady']:.2f} clips/s steady"
        + (f", {bare['failed']} without a face" if bare["failed"] else "")
        + "\n"
        f"ratio to the bare script: {result['clips_per_s']:.2f} / {bare['clips_per_s']:.2f} clips/s = "
        f"{goal['value']:.2f} with start-up (steady: {result['ratio_to_bare_steady']:.2f})\n"
        + format_goals(result["goals"])
    )


if __name__ == "__main__":  # python -m microfer.bench.prepare
    bench_prepare()
