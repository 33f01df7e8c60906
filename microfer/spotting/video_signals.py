"""The motion signal of every video of a spotting dataset, computed once and cached as .npz
(spot-eval reruns and every fold reuse it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from microfer.clip.video import open_frames
from microfer.errors import MicroferError
from microfer.spotting.spot import MotionSignal, SignalSettings, motion_signal, spot_curves


@dataclass
class VideoData:
    subject: str
    video: str
    signal: MotionSignal
    truth: pd.DataFrame
    curves: tuple[np.ndarray, np.ndarray, np.ndarray]


def settings_key(settings: SignalSettings) -> str:
    """Short hash of the signal settings: the cache folder of the signals they make."""
    return hashlib.sha1(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:12]


def load_signals(
    root: Path,
    intervals: pd.DataFrame,
    cache: Path,
    settings: SignalSettings,
    progress: bool = True,
) -> tuple[list[VideoData], list[dict]]:
    """The motion signal of every video (computed once, saved under `cache`, reused on a rerun)."""
    videos, failures = [], []
    groups = list(intervals.groupby(["subject", "video"], sort=True))
    for k, ((subject, video), truth) in enumerate(groups, 1):
        path = cache / (video.replace("/", "__") + ".npz")
        try:
            if path.is_file():
                signal = MotionSignal.load(path)
            else:
                source = open_frames(Path(root) / video)
                signal = motion_signal(
                    source,
                    float(truth["fps"].iloc[0]),
                    settings,
                    progress=progress,
                    desc=f"[{k}/{len(groups)}] {video}",
                )
                signal.save(path)
        except MicroferError as exc:
            failures.append({"video": video, "subject": subject, "reason": str(exc)})
            continue
        videos.append(
            VideoData(subject, video, signal, truth.reset_index(drop=True), spot_curves(signal))
        )
    return videos, failures
