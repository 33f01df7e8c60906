"""Per-stage timings of one-clip prediction, the model path alone, and feature throughput.

`bench_predict` times `Predictor.predict` on a 60-frame 640 x 480 synthetic video (written
by `microfer.synth`, the same kind of file `microfer predict` reads), in two modes: with
onset/apex/offset given (only those frames are decoded and aligned) and with nothing given
(the whole clip is scanned and the interval spotted). Each figure is the MEDIAN over
repeated in-process runs after one warm-up run, so one-off costs (model loading, first
allocations) and the odd slow run do not count. `model_path` is what the published method's
35.4 ms/sample compares with: network input + MobileViT + SVM on a clip that is already
prepared. The goals are checked on the numbers measured here, on this machine.

Every result is a plain dict of numbers (per-run values included, so a reader can check
the medians); `write_results` saves them as bench.json with the machine they came from,
and a bar chart of the stages (bench_stages.png).
"""

from __future__ import annotations

import os
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import pandas as pd

from microfer.bench.demo import run_demo
from microfer.bench.predict_timing import PREDICT_STAGES as PREDICT_STAGES  # re-exported
from microfer.bench.predict_timing import median as median  # re-exported
from microfer.bench.predict_timing import (
    ordered_stages,
    stage_summary,  # noqa: F401  (importable from here too)
    time_features,
    time_model_path,
    time_predict,
    time_shell_predict,
)
from microfer.clip.prepare import PrepareSettings, prepare_clip
from microfer.clip.video import open_frames
from microfer.errors import MicroferError
from microfer.io import atomic_path, package_versions, write_json
from microfer.learn.evaluate import LosoSettings
from microfer.learn.train import train_bundle
from microfer.recognise.predict import Predictor
from microfer.synth import generate

PAPER_MS_PER_SAMPLE = 35.4  # the published MobileViT features + SVM method, per sample
GOAL_MODEL_PATH_MS = 15.0  # our model path (input + network + SVM), per clip
GOAL_PREDICT_MS = 250.0  # whole predict of a 60-frame 640 x 480 clip, 2 CPU cores
GOAL_IN_PROCESS_MS = 150.0  # goal: in-process predict of a real-clip kind (frames given)
GOAL_SHELL_S = 1.5  # goal: `microfer predict` from the shell, wall seconds
GOAL_SHELL_MB = 400.0  # goal: ... and its peak resident memory
MODES = ("given", "spotted")
CLIP_FRAMES = 60


# ---- the clip ---------------------------------------------------------------------------------------


def make_bench_clip(out: Path, seed: int = 0, n_frames: int = CLIP_FRAMES) -> dict:
    """Write one synthetic n_frames 640 x 480 video under `out`; {"video", "onset", "apex", "offset"}."""
    synth = generate(
        "video",
        Path(out),
        subjects=1,
        clips_per_subject=1,
        clip_frames=(n_frames, n_frames),
        seed=seed,
        progress=False,
    )
    row = pd.read_csv(synth.truth_file, dtype=str, keep_default_na=False).iloc[0]
    return {
        "video": synth.root / row["frame_dir"],
        "onset": int(row["onset"]),
        "apex": int(row["apex"]),
        "offset": int(row["offset"]),
        "frames": n_frames,
    }


BENCH_FEATURES = (
    "mobilevit_xxs/apex/final/avg"  # a network bundle: the heavier kind to load and run
)


@contextmanager
def demo_bundle(echo: Optional[Callable[[str], None]] = None) -> Iterator[Path]:
    """A MobileViT bundle trained on the quick demo's clips (about 35 s) in a temporary folder.

    The demo's own grid usually picks a training-free descriptor; the bench times the
    network kind, which is what costs start-up time and memory."""
    with tempfile.TemporaryDirectory(prefix="microfer-bench-demo-") as tmp:
        if echo is not None:
            echo(
                f"no --model given: training a {BENCH_FEATURES} bundle on the quick demo's clips first (about 35 s)"
            )
        demo = run_demo(tmp, quick=True, echo=None, progress=False)
        yield train_bundle(
            "megc2019-composite",
            demo.out / "cache" / PrepareSettings().key(),
            Path(tmp) / "bench",
            manifest=demo.out / "manifest.csv",
            settings=LosoSettings(features=(BENCH_FEATURES,)),
            progress=False,
        ).bundle


# ---- predict ----------------------------------------------------------------------------------------


def _time_clip(predictor: Predictor, clip: dict, runs: int) -> dict:
    """The clip's size and both predict modes' timings."""
    video = clip["video"]
    frames = {k: clip[k] for k in ("onset", "apex", "offset")}
    height, width = open_frames(video).read([frames["onset"]])[0].shape[:2]
    return {
        "clip": {"frames": clip["frames"], "width": width, "height": height, **frames},
        "runs": runs,
        "given": time_predict(predictor, video, runs, **frames),
        "spotted": time_predict(predictor, video, runs),
    }


def _shell_predict(model, video: Path, runs: int, threads: Optional[int]) -> dict:
    shell = time_shell_predict(Path(model), video, runs)
    # "same label and scores": the shell's answer against torch running the bundle's weights
    reference = Predictor(model, num_threads=threads, runtime="torch").predict(video)
    shell["same_as_torch"] = bool(
        shell["label"] == reference.label
        and shell["scores"].keys() == reference.scores.keys()
        and all(abs(shell["scores"][k] - v) <= 2e-4 for k, v in reference.scores.items())
    )
    return shell


def _predict_goals(result: dict) -> dict:
    """The goals of a bench_predict result (the shell's when it ran)."""
    worst = max(result[m]["total_ms"] for m in MODES)
    goals = {
        "model_path_ms": goal_entry(
            "model path (input + network + SVM), clip already prepared",
            result["model_path"]["median_ms"],
            GOAL_MODEL_PATH_MS,
            "ms",
        ),
        "predict_ms": goal_entry(
            "in-process predict, slower mode (all spotted)", worst, GOAL_PREDICT_MS, "ms"
        ),
        "in_process_given_ms": goal_entry(
            "in-process predict, onset/apex/offset given",
            result["given"]["total_ms"],
            GOAL_IN_PROCESS_MS,
            "ms",
        ),
    }
    shell = result.get("shell")
    if shell is not None:
        goals["shell_s"] = goal_entry(
            "`microfer predict` from the shell, all spotted (wall)",
            shell["median_s"],
            GOAL_SHELL_S,
            "s",
        )
        goals["shell_mb"] = goal_entry(
            "`microfer predict` from the shell, peak memory", shell["peak_mb"], GOAL_SHELL_MB, "MB"
        )
    return goals


def bench_predict(
    model,
    runs: int = 10,
    threads: Optional[int] = None,
    seed: int = 0,
    model_runs: int = 50,
    feature_clips: int = 64,
    batch_size: int = 32,
    shell_runs: int = 3,
) -> dict:
    """Per-stage latency of `Predictor.predict` and of the model path alone; see the module docstring.

    `model`: a bundle folder (or a loaded Bundle). `threads`: CPU threads for torch and
    OpenCV (default: theirs). `runs` timed predictions per mode after one warm-up,
    `model_runs` timed model-path runs, `feature_clips` clips for the throughput figure.
    """
    if runs < 1 or model_runs < 1 or feature_clips < 1 or batch_size < 1:
        raise MicroferError(
            f"bench needs runs, model_runs, feature_clips and batch_size >= 1 "
            f"(got {runs}, {model_runs}, {feature_clips}, {batch_size})"
        )
    # -1 = OpenCV's default: an earlier prepare in this process (the demo) may have left it at 1
    cv2.setNumThreads(int(threads) if threads else -1)
    predictor = Predictor(model, num_threads=threads)
    with tempfile.TemporaryDirectory(prefix="microfer-bench-clip-") as tmp:
        clip = make_bench_clip(Path(tmp) / "clip", seed=seed)
        result = _time_clip(predictor, clip, runs)
        prepared = prepare_clip(
            open_frames(clip["video"]),
            clip["onset"],
            clip["apex"],
            clip["offset"],
            predictor.prepare_settings,
        )
        shell = None
        if shell_runs and isinstance(model, (str, Path)):
            shell = _shell_predict(model, clip["video"], shell_runs, threads)
    result["model_path"] = time_model_path(predictor, prepared, model_runs)
    result["features"] = time_features(predictor, prepared, feature_clips, batch_size, threads)
    result["reference"] = {"paper_ms_per_sample": PAPER_MS_PER_SAMPLE}
    result["runtime"] = predictor.runtime
    if shell is not None:
        result["shell"] = shell
    result["goals"] = _predict_goals(result)
    result["machine"] = machine_info()
    return result


def goal_entry(
    what: str, value: float, goal: float, unit: str, higher_is_better: bool = False
) -> dict:
    """One goal as bench.json records it: the measured value, the goal, their ratio, met or not."""
    met = value >= goal if higher_is_better else value <= goal
    return {
        "what": what,
        "value": float(value),
        "goal": float(goal),
        "unit": unit,
        "better": "higher" if higher_is_better else "lower",
        "ratio": float(value) / goal if goal else float("nan"),
        "met": bool(met),
    }


def format_goals(*goal_sets: Optional[dict]) -> str:
    """Every goal of this run, one line each: measured, goal, ratio, met / MISSED."""
    lines = ["goals (measured in this run):"]
    for goals in goal_sets:
        for g in (goals or {}).values():
            sign = ">=" if g["better"] == "higher" else "<="
            lines.append(
                f"  {g['what']:<58} {g['value']:8.2f} {g['unit']:<8} goal {sign} {g['goal']:g} "
                f"{g['unit']:<8} ratio {g['ratio']:.2f}  {_met(g)}"
            )
    return "\n".join(lines)


# ---- machine ----------------------------------------------------------------------------------------


def machine_info() -> dict:
    """Where the numbers come from: cores, threads, load, versions."""
    import torch  # only here: the bench modules load without torch until a machine is described

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    versions = package_versions()
    versions["opencv"] = cv2.__version__
    return {
        "cpu_count": os.cpu_count() or 0,
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "load_average": load,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "versions": versions,
    }


# ---- text, json, plot -------------------------------------------------------------------------------


def _met(goal: dict) -> str:
    return "met" if goal["met"] else "MISSED"


def format_predict(result: dict) -> str:
    """The predict benchmark as a text table."""
    clip = result["clip"]
    given, spotted = result["given"], result["spotted"]
    lines = [
        f"predict: {clip['frames']}-frame {clip['width']}x{clip['height']} video, median of {result['runs']} runs "
        f"after one warm-up ({result['machine']['cpus_usable']} CPUs, "
        f"torch threads {result['machine']['torch_threads']})",
        f"  {'stage':<12}{'frames given':>14}{'all spotted':>14}",
    ]
    stages = ordered_stages([given["stages_ms"], spotted["stages_ms"]])
    for stage in stages:
        lines.append(
            f"  {stage:<12}{given['stages_ms'].get(stage, 0.0):>11.1f} ms"
            f"{spotted['stages_ms'].get(stage, 0.0):>11.1f} ms"
        )
    lines.append(
        f"  {'whole call':<12}{given['total_ms']:>11.1f} ms{spotted['total_ms']:>11.1f} ms"
        "   (median wall time of predict())"
    )
    if "cpu_ms" in given and "cpu_ms" in spotted:  # bench.json files before it have none
        lines.append(
            f"  {'cpu time':<12}{given['cpu_ms']:>11.1f} ms{spotted['cpu_ms']:>11.1f} ms"
            "   (median CPU time of predict(), all threads: what other work on the machine "
            "hardly changes)"
        )
    mp, feats, goals = result["model_path"], result["features"], result["goals"]
    lines += [
        "",
        f"model path (input + network + SVM, clip already prepared), median of {mp['runs']} runs:",
        f"  ours        {mp['median_ms']:6.1f} ms/clip   (input {mp['to_input_ms']:.2f}, network+input "
        f"{mp['network_ms']:.1f}, SVM {mp['svm_ms']:.2f} ms)",
        f"  published   {result['reference']['paper_ms_per_sample']:6.1f} ms/sample (reference)",
        f"feature extraction: {feats['clips_per_s']:.1f} clips/s ({feats['ms_per_clip']:.1f} ms/clip; "
        f"{feats['clips']} clips, batch {feats['batch_size']})",
    ]
    if "shell" in result:
        sh = result["shell"]
        lines += [
            "",
            f"`microfer predict` from the shell ({sh['runs']} runs, network runtime {result['runtime']}): "
            f"median {sh['median_s']:.2f} s wall, peak {sh['peak_mb']:.0f} MB; label and scores "
            f"{'the same as' if sh['same_as_torch'] else 'DIFFERENT from'} torch running the bundle's weights",
        ]
    lines += ["", format_goals(goals)]
    return "\n".join(lines)


def plot_stages(result: dict, path: Path) -> None:
    """Stacked horizontal bars of the median stage ms of each predict mode, with the goal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"given": "frames given", "spotted": "all spotted"}
    stages = ordered_stages([result[m]["stages_ms"] for m in MODES])
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 3.0))
    for row, mode in enumerate(MODES):
        left = 0.0
        for k, stage in enumerate(stages):
            ms = result[mode]["stages_ms"].get(stage, 0.0)
            ax.barh(row, ms, left=left, color=colours(k % 10), label=stage if row == 0 else None)
            left += ms
        ax.text(
            left + 3,
            row,
            f"{result[mode]['total_ms']:.0f} ms (whole call)",
            va="center",
            fontsize=8,
        )
    ax.axvline(GOAL_PREDICT_MS, color="black", linestyle="--", linewidth=1)
    ax.text(
        GOAL_PREDICT_MS,
        (len(MODES) - 1) / 2,
        f" goal {GOAL_PREDICT_MS:.0f} ms",
        fontsize=8,
        va="center",
    )
    ax.set_yticks(range(len(MODES)), [labels[m] for m in MODES])
    ax.set_xlabel("median ms per stage, stacked")
    clip = result["clip"]
    ax.set_title(
        f"predict(), {clip['frames']}-frame {clip['width']}x{clip['height']} video", fontsize=10
    )
    ax.set_xlim(0, max(GOAL_PREDICT_MS, *(result[m]["total_ms"] for m in MODES)) * 1.3)
    ax.legend(
        ncol=len(stages), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_results(
    out: Path, predict: Optional[dict] = None, prepare: Optional[dict] = None
) -> dict[str, Path]:
    """bench.json (all numbers + machine) and, with predict results, bench_stages.png under `out`."""
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
