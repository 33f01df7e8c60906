"""Spotting micro- and macro-expressions in long videos: a streamed motion signal -> intervals.

Training-free, in two stages that are kept apart so an evaluation can compute the signal of
each video once and choose the interval parameters inside the training folds:

1. `motion_signal(source, fps)` (`spotting.signal`): ONE pass over the video, a frame at a
   time; the face is aligned once and followed, and each frame's motion per region is the
   feature difference against the frames k before and after it (`spotting.difference`).
2. `spot_intervals(signal, PeakSettings)` (`spotting.intervals`): peaks of the video's curve
   in noise units are intervals, unless a rule (`spotting.rules`) tells a head movement,
   a blink or talking.

`spot_video` runs both. Thresholds are the caller's: `microfer spot` uses the defaults
of PeakSettings, `microfer spot-eval` chooses them on the training subjects of each fold.
Every name of the stages is importable from here too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from microfer.clip.frames import check_fps
from microfer.clip.video import open_frames
from microfer.clip.video_file import video_fps
from microfer.errors import MicroferError
from microfer.spotting.difference import REGION_NAMES, SPOT_REGIONS
from microfer.spotting.intervals import (
    MICRO_MAX_S,
    PeakSettings,
    SpottedInterval,
    region_z,
    spot_curve,
    spot_curves,
    spot_intervals,
)
from microfer.spotting.signal import (
    EYES,
    MOUTH,
    MotionSignal,
    SignalSettings,
    motion_signal,
    runs_of,
)

__all__ = [
    "EYES",
    "MICRO_MAX_S",
    "MOUTH",
    "REGION_NAMES",
    "SPOT_REGIONS",
    "MotionSignal",
    "PeakSettings",
    "SignalSettings",
    "SpotResult",
    "SpottedInterval",
    "motion_signal",
    "recognise_micro",
    "region_z",
    "runs_of",
    "spot_curve",
    "spot_curves",
    "spot_intervals",
    "spot_video",
    "video_fps",
]


@dataclass
class SpotResult:
    path: str
    fps: float
    n_frames: int
    intervals: list[SpottedInterval]
    lost: list[tuple[int, int]]  # frame-number ranges without a usable face
    realigned: list[int]
    signal: MotionSignal
    settings: dict
    rejected: list = field(default_factory=list)  # (interval, why): peaks that were not expressions

    def to_dict(self) -> dict:
        return {
            "video": self.path,
            "fps": self.fps,
            "n_frames": self.n_frames,
            "intervals": [iv.to_dict() for iv in self.intervals],
            "rejected": [dict(iv.to_dict(), reason=why) for iv, why in self.rejected],
            "face_lost": [list(r) for r in self.lost],
            "realigned": self.realigned,
            "settings": self.settings,
        }


def spot_video(
    path,
    fps: Optional[float] = None,
    signal_settings: SignalSettings = SignalSettings(),
    peaks: PeakSettings = PeakSettings(),
    progress: bool = False,
) -> SpotResult:
    """Spot the expressions of one video file or frame folder (frame rate from the container,
    or `fps`, which a frame folder needs)."""
    source = open_frames(path)
    fps = check_fps(fps, f"{path}: --fps") if fps is not None else video_fps(Path(path))
    signal = motion_signal(source, fps, signal_settings, progress=progress)
    rejected: list = []
    intervals = spot_intervals(signal, peaks, rejected=rejected)
    return SpotResult(
        path=str(path),
        fps=fps,
        n_frames=len(signal.numbers),
        intervals=intervals,
        lost=signal.lost_ranges(),
        realigned=signal.realigned,
        signal=signal,
        settings={"signal": asdict(signal_settings), "peaks": asdict(peaks)},
        rejected=rejected,
    )


def recognise_micro(
    intervals: Sequence[SpottedInterval], source, predictor
) -> list[tuple[SpottedInterval, str]]:
    """Spot-then-recognise: set `emotion` of each micro interval with a `predict.Predictor`
    (onset, spotted apex and offset given, so the classifier sees the interval as spotted).
    Returns the (interval, reason) of those that could not be recognised."""
    failed = []
    for iv in intervals:
        if iv.type != "micro":
            continue
        numbers = [n for n in source.numbers if iv.onset <= n <= iv.offset]
        try:
            frames = source.read(numbers)
            pred = predictor.predict(
                frames, onset=0, apex=numbers.index(iv.apex), offset=len(numbers) - 1
            )
            iv.emotion, iv.scores, iv.probabilities = pred.label, pred.scores, pred.probabilities
        except MicroferError as exc:
            failed.append((iv, str(exc)))
    return failed
