"""Per-stage timings of one-clip prediction, the model path alone, and feature throughput.

`bench_predict` times `Predictor.predict` on a 60-frame 640 x 480 synthetic video (written
by `microfer.synth`, the same kind of file `microfer predict` reads), in two modes: with
onset/apex/offset given (only those frames are decoded and aligned) and with nothing given
(the whole clip is scanned and the interval spotted). Each figure is the MEDIAN over
repeated in-process runs after one warm-up run, so one-off costs (model loading, first
allocations) and the odd slow run do not count. `model_path` is what the seed paper's
35.4 ms/sample compares with: network input + MobileViT + SVM on a clip that is already
prepared. The goals are checked on the numbers measured here, on this machine.

Every result is a plain dict of numbers (per-run values included, so a reader can check
the medians); `write_results` saves them as bench.json with the machine they came from,
and a bar chart of the stages (bench_stages.png).
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, Optional

PAPER_MS_PER_SAMPLE = 35.4          # seed paper: MobileViT features + SVM, per sample
GOAL_MODEL_PATH_MS = 15.0           # our model path (input + network + SVM), per clip
GOAL_PREDICT_MS = 250.0             # whole predict of a 60-frame 640 x 480 clip, 2 CPU cores
PREDICT_STAGES = ("open", "decode", "detect", "landmarks", "warp", "spot", "flow", "network", "svm")
MODES = ("given", "spotted")
CLIP_FRAMES = 60


def median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else 0.0


def _ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1000


# ---- the clip ---------------------------------------------------------------------------------------

def make_bench_clip(out: Path, seed: int = 0, n_frames: int = CLIP_FRAMES) -> dict:
    """Write one synthetic n_frames 640 x 480 video under `out`; {"video", "onset", "apex", "offset"}."""
    import pandas as pd

    from microfer.synth import generate

    synth = generate("video", Path(out), subjects=1, clips_per_subject=1, clip_frames=(n_frames, n_frames),
                     seed=seed, progress=False)
    row = pd.read_csv(synth.truth_file, dtype=str, keep_default_na=False).iloc[0]
    return {"video": synth.root / row["frame_dir"], "onset": int(row["onset"]), "apex": int(row["apex"]),
            "offset": int(row["offset"]), "frames": n_frames}


@contextmanager
def demo_bundle(echo: Optional[Callable[[str], None]] = None) -> Iterator[Path]:
    """A model bundle trained by the quick demo (about 25 s) in a temporary folder."""
    from microfer.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="microfer-bench-demo-") as tmp:
        if echo is not None:
            echo("no --model given: training a bundle with the quick demo first (about 25 s)")
        yield Path(run_demo(tmp, quick=True, echo=None, progress=False).bundle)


# ---- predict ----------------------------------------------------------------------------------------

def _ordered_stages(dicts) -> list[str]:
    """Stage names found in the dicts, in pipeline order (then any others by name);
    bench.json sorts its keys, so the order cannot come from the dicts."""
    found = {s for d in dicts for s in d}
    return [s for s in PREDICT_STAGES if s in found] + sorted(found - set(PREDICT_STAGES))


def _stage_summary(runs: list[dict[str, float]], walls: list[float]) -> dict:
    stages = _ordered_stages(runs)
    runs_ms = {s: [float(r.get(s, 0.0)) for r in runs] for s in stages}
    return {"stages_ms": {s: median(v) for s, v in runs_ms.items()},
            "total_ms": median(walls),
            "runs_ms": runs_ms,
            "total_runs_ms": [float(w) for w in walls]}


def _time_predict(predictor, video: Path, runs: int, **frames) -> dict:
    predictor.predict(video, **frames)  # warm-up: first decode, first allocations
    stage_runs, walls = [], []
    for _ in range(runs):
        t = time.perf_counter()
        p = predictor.predict(video, **frames)
        walls.append(_ms_since(t))
        stage_runs.append(dict(p.timings_ms))
    return _stage_summary(stage_runs, walls)


def _time_model_path(predictor, prepared, runs: int) -> dict:
    """Median ms of Predictor.features (input + network) + SVM on an already prepared clip."""
    from microfer.representation import to_input

    classifier = predictor.bundle.classifier
    kinds = predictor.feature_setting.representations
    classifier.class_scores(predictor.features(prepared))  # warm-up
    totals, networks, svms, inputs = [], [], [], []
    for _ in range(runs):
        t = time.perf_counter()
        feats = predictor.features(prepared)
        t_net = time.perf_counter()
        classifier.class_scores(feats)
        classifier.predict(feats)
        t_end = time.perf_counter()
        totals.append((t_end - t) * 1000)
        networks.append((t_net - t) * 1000)
        svms.append((t_end - t_net) * 1000)
        t = time.perf_counter()
        for kind in kinds:
            to_input(prepared, kind)
        inputs.append(_ms_since(t))
    return {"median_ms": median(totals), "network_ms": median(networks), "svm_ms": median(svms),
            "to_input_ms": median(inputs), "runs": runs, "runs_ms": totals}


def _time_features(predictor, prepared, n_clips: int, batch_size: int, threads: Optional[int]) -> dict:
    """Feature throughput on n_clips copies of one prepared clip, in batches (bundle weights)."""
    import numpy as np

    from microfer.features import FeatureModel

    model = FeatureModel(predictor.feature_setting, batch_size=batch_size, num_threads=threads)
    model.load_state_dict(predictor.bundle.network)
    clips = [prepared] * n_clips
    model(clips[:batch_size])  # warm-up
    t = time.perf_counter()
    feats = np.concatenate([model(clips[i:i + batch_size]) for i in range(0, n_clips, batch_size)])
    seconds = time.perf_counter() - t
    return {"clips": n_clips, "batch_size": batch_size, "seconds": seconds, "clips_per_s": n_clips / seconds,
            "ms_per_clip": 1000 * seconds / n_clips, "feature_dim": int(feats.shape[1])}


def bench_predict(model, runs: int = 10, threads: Optional[int] = None, seed: int = 0, model_runs: int = 50,
                  feature_clips: int = 64, batch_size: int = 32) -> dict:
    """Per-stage latency of `Predictor.predict` and of the model path alone; see the module docstring.

    `model`: a bundle folder (or a loaded Bundle). `threads`: CPU threads for torch and
    OpenCV (default: theirs). `runs` timed predictions per mode after one warm-up,
    `model_runs` timed model-path runs, `feature_clips` clips for the throughput figure.
    """
    import cv2

    from microfer.errors import MicroferError
    from microfer.predict import Predictor
    from microfer.prepare import prepare_clip
    from microfer.video import open_frames

    if runs < 1 or model_runs < 1 or feature_clips < 1 or batch_size < 1:
        raise MicroferError(f"bench needs runs, model_runs, feature_clips and batch_size >= 1 "
                            f"(got {runs}, {model_runs}, {feature_clips}, {batch_size})")
    # -1 = OpenCV's default: an earlier prepare in this process (the demo) may have left it at 1
    cv2.setNumThreads(int(threads) if threads else -1)
    predictor = Predictor(model, num_threads=threads)
    with tempfile.TemporaryDirectory(prefix="microfer-bench-clip-") as tmp:
        clip = make_bench_clip(Path(tmp) / "clip", seed=seed)
        video = clip["video"]
        frames = {k: clip[k] for k in ("onset", "apex", "offset")}
        height, width = open_frames(video).read([frames["onset"]])[0].shape[:2]
        result = {"clip": {"frames": clip["frames"], "width": width, "height": height, **frames},
                  "runs": runs,
                  "given": _time_predict(predictor, video, runs, **frames),
                  "spotted": _time_predict(predictor, video, runs)}
        prepared = prepare_clip(open_frames(video), frames["onset"], frames["apex"], frames["offset"],
                                predictor.prepare_settings)
    result["model_path"] = _time_model_path(predictor, prepared, model_runs)
    result["features"] = _time_features(predictor, prepared, feature_clips, batch_size, threads)
    worst = max(result[m]["total_ms"] for m in MODES)
    result["reference"] = {"paper_ms_per_sample": PAPER_MS_PER_SAMPLE}
    result["goals"] = {
        "model_path_ms": {"goal": GOAL_MODEL_PATH_MS, "value": result["model_path"]["median_ms"],
                          "met": result["model_path"]["median_ms"] <= GOAL_MODEL_PATH_MS},
        "predict_ms": {"goal": GOAL_PREDICT_MS, "value": worst, "met": worst <= GOAL_PREDICT_MS},
    }
    result["machine"] = machine_info()
    return result


# ---- machine ----------------------------------------------------------------------------------------

def machine_info() -> dict:
    """Where the numbers come from: cores, threads, load, versions."""
    import cv2
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    versions = {"python": platform.python_version()}
    for pkg in ("microfer", "torch", "timm", "numpy", "opencv-contrib-python-headless", "dlib-bin", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    versions["opencv"] = cv2.__version__
    return {"cpu_count": os.cpu_count() or 0, "cpus_usable": usable, "torch_threads": torch.get_num_threads(),
            "opencv_threads": cv2.getNumThreads(), "load_average": load, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "versions": versions}


# ---- text, json, plot -------------------------------------------------------------------------------

def _met(goal: dict) -> str:
    return "met" if goal["met"] else "MISSED"


def format_predict(result: dict) -> str:
    """The predict benchmark as a text table."""
    clip = result["clip"]
    given, spotted = result["given"], result["spotted"]
    lines = [f"predict: {clip['frames']}-frame {clip['width']}x{clip['height']} video, median of {result['runs']} runs "
             f"after one warm-up ({result['machine']['cpus_usable']} CPUs, "
             f"torch threads {result['machine']['torch_threads']})",
             f"  {'stage':<12}{'frames given':>14}{'all spotted':>14}"]
    stages = _ordered_stages([given["stages_ms"], spotted["stages_ms"]])
    for stage in stages:
        lines.append(f"  {stage:<12}{given['stages_ms'].get(stage, 0.0):>11.1f} ms"
                     f"{spotted['stages_ms'].get(stage, 0.0):>11.1f} ms")
    lines.append(f"  {'whole call':<12}{given['total_ms']:>11.1f} ms{spotted['total_ms']:>11.1f} ms"
                 "   (median wall time of predict())")
    mp, feats, goals = result["model_path"], result["features"], result["goals"]
    lines += [
        "",
        f"model path (input + network + SVM, clip already prepared), median of {mp['runs']} runs:",
        f"  ours        {mp['median_ms']:6.1f} ms/clip   (input {mp['to_input_ms']:.2f}, network+input "
        f"{mp['network_ms']:.1f}, SVM {mp['svm_ms']:.2f} ms)",
        f"  seed paper  {result['reference']['paper_ms_per_sample']:6.1f} ms/sample (reference)",
        f"feature extraction: {feats['clips_per_s']:.1f} clips/s ({feats['ms_per_clip']:.1f} ms/clip; "
        f"{feats['clips']} clips, batch {feats['batch_size']})",
        "",
        "goals:",
        f"  model path <= {goals['model_path_ms']['goal']:.0f} ms: {goals['model_path_ms']['value']:.1f} ms  "
        f"{_met(goals['model_path_ms'])}",
        f"  whole predict of a 60-frame 640x480 clip <= {goals['predict_ms']['goal']:.0f} ms on 2 CPU cores "
        f"(slower mode): {goals['predict_ms']['value']:.1f} ms  {_met(goals['predict_ms'])}",
    ]
    return "\n".join(lines)


def plot_stages(result: dict, path: Path) -> None:
    """Stacked horizontal bars of the median stage ms of each predict mode, with the goal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from microfer._io import atomic_path

    labels = {"given": "frames given", "spotted": "all spotted"}
    stages = _ordered_stages([result[m]["stages_ms"] for m in MODES])
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 3.0))
    for row, mode in enumerate(MODES):
        left = 0.0
        for k, stage in enumerate(stages):
            ms = result[mode]["stages_ms"].get(stage, 0.0)
            ax.barh(row, ms, left=left, color=colours(k % 10), label=stage if row == 0 else None)
            left += ms
        ax.text(left + 3, row, f"{result[mode]['total_ms']:.0f} ms (whole call)", va="center", fontsize=8)
    ax.axvline(GOAL_PREDICT_MS, color="black", linestyle="--", linewidth=1)
    ax.text(GOAL_PREDICT_MS, (len(MODES) - 1) / 2, f" goal {GOAL_PREDICT_MS:.0f} ms", fontsize=8, va="center")
    ax.set_yticks(range(len(MODES)), [labels[m] for m in MODES])
    ax.set_xlabel("median ms per stage, stacked")
    clip = result["clip"]
    ax.set_title(f"predict(), {clip['frames']}-frame {clip['width']}x{clip['height']} video", fontsize=10)
    ax.set_xlim(0, max(GOAL_PREDICT_MS, *(result[m]["total_ms"] for m in MODES)) * 1.3)
    ax.legend(ncol=len(stages), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_results(out: Path, predict: Optional[dict] = None, prepare: Optional[dict] = None) -> dict[str, Path]:
    """bench.json (all numbers + machine) and, with predict results, bench_stages.png under `out`."""
    from microfer._io import write_json

    out = Path(out)
    doc = {"machine": (predict or {}).get("machine") or machine_info()}
    if predict is not None:
        doc["predict"] = {k: v for k, v in predict.items() if k != "machine"}
    if prepare is not None:
        doc["prepare"] = prepare
    paths = {"json": out / "bench.json"}
    write_json(paths["json"], doc)
    if predict is not None:
        paths["png"] = out / "bench_stages.png"
        plot_stages(predict, paths["png"])
    return paths
