"""The timers of the predict benchmark: `Predictor.predict` per stage, the model path alone,
feature throughput, and `microfer predict` as a new process (wall seconds, peak memory).
Each figure is the median over repeated runs after one warm-up run. Beside its wall time,
a predict run's CPU time (this process, all threads): on a machine shared with other work
the wall time also counts the waits for a core, the CPU time hardly."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from microfer.clip.representation import to_input
from microfer.learn.features import FeatureModel

PREDICT_STAGES = ("open", "decode", "detect", "landmarks", "warp", "spot", "flow", "network", "svm")


def median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else 0.0


def ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1000


def ordered_stages(dicts) -> list[str]:
    """Stage names found in the dicts, in pipeline order (then any others by name);
    bench.json sorts its keys, so the order cannot come from the dicts."""
    found = {s for d in dicts for s in d}
    return [s for s in PREDICT_STAGES if s in found] + sorted(found - set(PREDICT_STAGES))


def stage_summary(
    runs: list[dict[str, float]], walls: list[float], cpus: Optional[list[float]] = None
) -> dict:
    stages = ordered_stages(runs)
    runs_ms = {s: [float(r.get(s, 0.0)) for r in runs] for s in stages}
    summary = {
        "stages_ms": {s: median(v) for s, v in runs_ms.items()},
        "total_ms": median(walls),
        "runs_ms": runs_ms,
        "total_runs_ms": [float(w) for w in walls],
    }
    if cpus is not None:
        summary["cpu_ms"] = median(cpus)
        summary["cpu_runs_ms"] = [float(c) for c in cpus]
    return summary


def time_predict(predictor, video: Path, runs: int, **frames) -> dict:
    predictor.predict(video, **frames)  # warm-up: first decode, first allocations
    stage_runs, walls, cpus = [], [], []
    for _ in range(runs):
        t, cpu = time.perf_counter(), time.process_time()
        p = predictor.predict(video, **frames)
        walls.append(ms_since(t))
        cpus.append((time.process_time() - cpu) * 1000)
        stage_runs.append(dict(p.timings_ms))
    return stage_summary(stage_runs, walls, cpus)


def time_model_path(predictor, prepared, runs: int) -> dict:
    """Median ms of Predictor.features (input + network) + SVM on an already prepared clip."""
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
        inputs.append(ms_since(t))
    return {
        "median_ms": median(totals),
        "network_ms": median(networks),
        "svm_ms": median(svms),
        "to_input_ms": median(inputs),
        "runs": runs,
        "runs_ms": totals,
    }


def time_features(
    predictor, prepared, n_clips: int, batch_size: int, threads: Optional[int]
) -> dict:
    """Feature throughput on n_clips copies of one prepared clip, in batches (bundle weights)."""
    model = FeatureModel(predictor.feature_setting, batch_size=batch_size, num_threads=threads)
    model.load_state_dict(predictor.bundle.network)
    clips = [prepared] * n_clips
    model(clips[:batch_size])  # warm-up
    t = time.perf_counter()
    feats = np.concatenate(
        [model(clips[i : i + batch_size]) for i in range(0, n_clips, batch_size)]
    )
    seconds = time.perf_counter() - t
    return {
        "clips": n_clips,
        "batch_size": batch_size,
        "seconds": seconds,
        "clips_per_s": n_clips / seconds,
        "ms_per_clip": 1000 * seconds / n_clips,
        "feature_dim": int(feats.shape[1]),
    }


# Runs one command and prints its wall seconds, CPU seconds and peak RSS. A small process of its own:
# the child's rusage peak counts the moments between fork and exec, when it is still a
# copy of its parent, so forking it straight from this (torch-sized) process would report
# the parent's size.
_LAUNCHER = """
import json, os, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:], stdout=open(sys.argv[1], "w"), stderr=subprocess.PIPE)
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "exit": os.waitstatus_to_exitcode(status),
                  "stderr": proc.stderr.read().decode(errors="replace")[-500:]}))
"""


def time_shell_command(args: list[str], runs: int) -> dict:
    """Wall seconds, CPU seconds (user + system: steadier than wall on a shared machine) and
    peak resident memory of `microfer ARGS` as a new process (interpreter start, imports and
    model loading included), `runs` times; its last stdout read as JSON."""
    walls, cpus, peaks, doc = [], [], [], {}
    with tempfile.TemporaryDirectory(prefix="microfer-bench-shell-") as tmp:
        out = Path(tmp) / "stdout.json"
        for _ in range(runs):
            launched = subprocess.run(
                [sys.executable, "-c", _LAUNCHER, str(out), sys.executable, "-m", "microfer"]
                + list(args),
                capture_output=True,
                text=True,
                check=True,
            )
            run = json.loads(launched.stdout)
            if run["exit"] != 0:
                raise RuntimeError(
                    f"microfer {args[0]} failed (exit {run['exit']}): {run['stderr'].strip()}"
                )
            walls.append(run["wall_s"])
            cpus.append(run["cpu_s"])
            peaks.append(run["peak_mb"])  # ru_maxrss is KiB on Linux
            doc = json.loads(out.read_text())
    return {
        "median_s": median(walls),
        "runs_s": walls,
        "cpu_median_s": median(cpus),
        "peak_mb": max(peaks),
        "runs_peak_mb": peaks,
        "output": doc,
        "runs": runs,
    }


def time_shell_predict(bundle: Path, video: Path, runs: int) -> dict:
    """`time_shell_command` of `microfer predict VIDEO --model BUNDLE --json`, with its label
    and scores."""
    shell = time_shell_command(["predict", str(video), "--model", str(bundle), "--json"], runs)
    doc = shell.pop("output")
    return {**shell, "label": doc.get("label"), "scores": doc.get("scores")}
