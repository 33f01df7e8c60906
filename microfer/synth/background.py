"""A real face video as the background of injected expressions: its frames, where its face
is in each, and the timeline that plays it (ping-pong when asked for more than it holds).

    bg = read_background(Path("talk.mp4"))
    bg.fps, bg.n_frames, bg.landmarks[i]   # (68, 2) float32, or None where no face was found
    timeline = pingpong(bg.n_frames, 900, start=10)   # source frame of each output frame
    for frame in bg.frames(timeline): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from microfer.clip import face as clip_face
from microfer.clip.video import open_frames
from microfer.clip.video_file import VideoSource, sequential_frames, video_fps
from microfer.errors import ClipError, MicroferError

# Ping-pong needs random access to the source; past this many decoded bytes the user's
# video is long enough to use as it is.
MAX_HELD_BYTES = 2 << 30


@dataclass
class Background:
    """One real video: fps, its size, and the 68 landmarks of the largest face per frame."""

    path: Path
    fps: float
    size: tuple[int, int]  # W, H
    landmarks: list[np.ndarray | None]
    held_bytes: int = 0  # decoded size of all its frames
    _held: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def n_frames(self) -> int:
        return len(self.landmarks)

    @property
    def has_face(self) -> np.ndarray:
        return np.array([p is not None for p in self.landmarks], bool)

    @property
    def face_width(self) -> float:
        """Median jaw width (landmarks 0-16) over the frames with a face, px."""
        widths = [float(np.linalg.norm(p[16] - p[0])) for p in self.landmarks if p is not None]
        return float(np.median(widths))

    def frames(self, timeline: np.ndarray) -> Iterator[np.ndarray]:
        """The source frames the timeline names, in its order (decoded again, or held)."""
        timeline = np.asarray(timeline)
        if not self._held and np.array_equal(timeline, np.arange(len(timeline))):
            for _, frame in zip(timeline, _decode(self.path)):
                yield frame
            return
        if not self._held:
            self._held = list(_decode(self.path))
            if len(self._held) != self.n_frames:
                raise ClipError(
                    f"{self.path}: decoded a different number of frames the second time"
                )
        for i in timeline:
            yield self._held[int(i)]


def _decode(path: Path) -> Iterator[np.ndarray]:
    source = open_frames(path)
    if isinstance(source, VideoSource):
        for _, frame in sequential_frames(source):
            yield frame
        return
    for number in source.numbers:
        (frame,) = source.read([number])
        yield frame


def read_background(path: Path, fps: float | None = None, progress=None) -> Background:
    """Decode `path` (a video file, or a frame folder with `fps` given) once and find the face
    in every frame (dlib, as `prepare` and `spot` find it). A frame folder has no frame rate;
    a video's own rate is used unless `fps` overrides it."""
    path = Path(path)
    if not path.exists():
        raise MicroferError(f"background video {path} does not exist")
    rate = float(fps) if fps is not None else video_fps(path)
    marks: list[np.ndarray | None] = []
    size = (0, 0)
    n_bytes = 0
    try:
        for frame in _decode(path):
            size = (frame.shape[1], frame.shape[0])
            n_bytes += frame.nbytes
            found = clip_face.detect_landmarks(frame)
            marks.append(None if found is None else found.points.astype(np.float32))
            if progress is not None:
                progress(1)
    except ClipError as exc:
        raise MicroferError(f"background video {path}: {exc}") from None
    if not marks:
        raise MicroferError(f"background video {path} holds no frame")
    if not any(p is not None for p in marks):
        raise MicroferError(
            f"background video {path}: no face found in any of its {len(marks)} frames"
        )
    return Background(path, float(rate), size, marks, n_bytes)


def pingpong(n_source: int, n_frames: int, start: int = 0) -> np.ndarray:
    """Source index of each of `n_frames` output frames: the source played forward, then
    backward, then forward ..., starting at position `start` of that cycle (the turning
    frames are not repeated, so no frame is frozen)."""
    if n_source < 1 or n_frames < 1:
        raise MicroferError(
            f"need a source and an output of at least one frame ({n_source}, {n_frames})"
        )
    if n_source == 1:
        return np.zeros(n_frames, np.int64)
    period = 2 * (n_source - 1)
    k = (start + np.arange(n_frames)) % period
    return np.where(k < n_source, k, period - k).astype(np.int64)


def turns(timeline: np.ndarray) -> list[int]:
    """Output frames (0-based) where the ping-pong reverses: a real video never does this."""
    d = np.diff(np.asarray(timeline))
    return [int(i) + 1 for i in np.flatnonzero(d[1:] * d[:-1] < 0)]


def check_holdable(bg: Background, n_frames: int, start: int) -> None:
    """Ping-pong holds the decoded source; refuse a source too large to hold."""
    plain = start == 0 and n_frames <= bg.n_frames
    held = bg.held_bytes
    if not plain and held > MAX_HELD_BYTES:
        raise MicroferError(
            f"background video {bg.path}: {held / 2**30:.1f} GiB decoded is too much to hold for "
            "playing it back and forth; use it at its own length (no --seconds beyond it)"
        )
