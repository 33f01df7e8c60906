"""Live: spot (and recognise) expressions while the frames arrive, from a camera, a stream
URL or a video file played as a stream.

The spotter of `microfer.spotting.spot` runs on a sliding window: every `hop_s` seconds the last
`window_s` seconds of frames are measured (`spot.motion_signal`) and spotted
(`spot.spot_intervals`, noise units taken over the window). Each window reports only the
intervals whose apex falls in its middle part -- the windows' middle parts tile the stream,
so an expression is reported once, by the window that sees it with context on both sides,
`margin` = (window - hop) / 2 seconds after it peaked. With a bundle, each micro interval is
recognised (`spot.recognise_micro`) before it is reported.

Memory is the window: frames are kept at most `MAX_SIDE` px wide (detection runs at that
size anyway), so 4 s of 30 fps video hold about 110 MB whatever the stream's length.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from microfer.clip.frames import bounded, check_fps
from microfer.clip.video import ArraySource, native_stderr_captured, prefetched
from microfer.errors import ClipError, MicroferError
from microfer.spotting.spot import (
    PeakSettings,
    SignalSettings,
    motion_signal,
    recognise_micro,
    spot_intervals,
)

MAX_SIDE = 640


@dataclass
class LiveEvent:
    """One spotted interval, as it is reported."""

    interval: object  # spot.SpottedInterval (frame numbers of the stream)
    reported_at_frame: int  # the last frame read when it was reported
    fps: float  # frames processed per second so far (reading + spotting)

    def to_dict(self) -> dict:
        return {
            **self.interval.to_dict(),
            "reported_at_frame": self.reported_at_frame,
            "fps": round(self.fps, 1),
        }


@dataclass
class LiveSettings:
    window_s: float = 4.0
    hop_s: float = 1.0

    def __post_init__(self):
        if self.hop_s <= 0 or self.window_s <= self.hop_s:
            raise MicroferError(
                f"live window {self.window_s} s must be longer than its hop {self.hop_s} s (> 0)"
            )


class LiveSpotter:
    """Feed frames with `push`; it returns the intervals that became final. `finish` reports
    what is left when the stream ends."""

    def __init__(
        self,
        fps: float,
        settings: LiveSettings = LiveSettings(),
        signal_settings=None,
        peaks=None,
        predictor=None,
    ):
        fps = check_fps(fps)
        self.fps, self.settings, self.predictor = fps, settings, predictor
        self.signal_settings = signal_settings or SignalSettings()
        self.peaks = peaks or PeakSettings()
        self.window = max(8, int(round(settings.window_s * fps)))
        self.hop = max(1, int(round(settings.hop_s * fps)))
        self.margin = (self.window - self.hop) // 2
        self.frames: collections.deque = collections.deque(maxlen=self.window)
        self.since = 0  # frames pushed since the last analysis
        self.reported_to: Optional[int] = None  # intervals with an apex before this frame are done
        self.failures: list[tuple[object, str]] = []
        self.face_seen = False  # a stream that never shows a face must say so, not "0 events"

    def push(self, number: int, frame: np.ndarray) -> list:
        scale = MAX_SIDE / max(frame.shape[:2])
        if scale < 1:
            frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        self.frames.append((int(number), frame))
        self.since += 1
        if len(self.frames) == self.window and (self.reported_to is None or self.since >= self.hop):
            return self._analyse(final=False)
        return []

    def finish(self) -> list:
        return self._analyse(final=True) if len(self.frames) >= 3 else []

    def _analyse(self, final: bool) -> list:
        self.since = 0
        numbers = [n for n, _ in self.frames]
        source = ArraySource([f for _, f in self.frames], numbers)
        try:
            signal = motion_signal(source, self.fps, self.signal_settings)
        except ClipError:
            return []  # too few frames with a face to measure anything
        self.face_seen |= bool(np.any(signal.face))
        intervals = spot_intervals(signal, self.peaks)
        start = numbers[0] if self.reported_to is None else self.reported_to
        end = numbers[-1] + 1 if final else numbers[min(len(numbers) - 1, self.margin + self.hop)]
        if self.reported_to is not None and not final:
            end = max(end, start)
        fresh = [iv for iv in intervals if start <= iv.apex < end]
        self.reported_to = end
        if self.predictor is not None and fresh:
            self.failures += recognise_micro(fresh, source, self.predictor)
        return fresh


def open_stream(camera: Optional[int] = None, url: Optional[str] = None, video=None):
    """A cv2.VideoCapture of exactly one of a camera index, a stream URL or a video file,
    with its frame rate (0 when the source does not say)."""
    chosen = [x for x in (camera, url, video) if x is not None]
    if len(chosen) != 1:
        raise MicroferError("give exactly one of a camera, a URL or a video file")
    target = camera if camera is not None else str(url if url is not None else video)
    with native_stderr_captured():
        cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        raise ClipError(f"cannot open {'camera ' + str(camera) if camera is not None else target}")
    return cap, float(cap.get(cv2.CAP_PROP_FPS) or 0.0)


def read_frames(
    cap, realtime: bool = False, fps: float = 0.0, buffer: int = 256, dropped: Optional[list] = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, frame) from a capture, read by a background thread so that decoding overlaps
    spotting. `realtime`: a file is paced at `fps`, like a camera, and frames the spotter
    cannot keep up with are dropped (counted in `dropped[0]`) instead of queued."""
    lost = dropped if dropped is not None else [0]
    lost[:] = [0]
    paced = realtime and fps > 0

    def produce():
        i, t0 = 0, time.perf_counter()
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            if paced:
                time.sleep(max(0.0, t0 + i / fps - time.perf_counter()))
            yield i, bounded(frame)  # the buffer holds up to `buffer` of them
            i += 1

    def count_drop():
        lost[0] += 1

    try:
        yield from prefetched(produce(), buffer, on_full=count_drop if paced else None)
    finally:
        cap.release()


def run_live(
    cap,
    fps: float,
    spotter: LiveSpotter,
    on_event: Callable[[LiveEvent], None],
    realtime: bool = False,
    max_frames: Optional[int] = None,
) -> dict:
    """Read the capture to its end (or `max_frames`), reporting events as they are spotted.
    Returns a summary: frames, seconds, fps achieved, events, dropped frames."""
    t0 = time.perf_counter()
    dropped = [0]
    n = events = 0
    last = -1
    for number, frame in read_frames(cap, realtime=realtime, fps=fps, dropped=dropped):
        n += 1
        last = number
        for iv in spotter.push(number, frame):
            events += 1
            on_event(LiveEvent(iv, number, n / (time.perf_counter() - t0)))
        if max_frames is not None and n >= max_frames:
            break
    for iv in spotter.finish():
        events += 1
        on_event(LiveEvent(iv, last, n / max(time.perf_counter() - t0, 1e-9)))
    seconds = time.perf_counter() - t0
    return {
        "frames": n,
        "seconds": seconds,
        "fps": n / seconds if seconds > 0 else 0.0,
        "events": events,
        "dropped": dropped[0],
        "unrecognised": len(spotter.failures),
        "face_found": spotter.face_seen,
    }
