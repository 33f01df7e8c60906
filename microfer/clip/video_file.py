"""Video files: the frame source of one video, its decoders (decord, else OpenCV), and
the capture of what the C decoders print, so a broken file gives one microfer line."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from microfer.clip.frames import MAX_FPS, bounded, check_numbers
from microfer.errors import ClipError, MicroferError


@dataclass
class VideoSource:
    """A video file; frame number = 0-based index + `first_number`."""

    path: Path
    n_frames: int
    first_number: int = 0
    numbers: list[int] = field(init=False)

    def __post_init__(self):
        self.numbers = list(range(self.first_number, self.first_number + self.n_frames))

    def read(self, numbers: Iterable[int]) -> list[np.ndarray]:
        numbers = [int(n) for n in numbers]
        check_numbers(self, numbers)
        indices = [n - self.first_number for n in numbers]
        # read straight through, OpenCV decodes the same frames at half decord's cost; decord
        # seeks exactly, and OpenCV reads what decord cannot (or where it is missing)
        readers = (
            (_cv2_read, _decord_read) if _without_seeking(indices) else (_decord_read, _cv2_read)
        )
        failure = None
        with native_stderr_captured() as noise:
            for reader in readers:
                try:
                    return reader(self.path, indices)
                except ClipError as exc:  # OpenCV's, naming the file and frame
                    failure = exc
                except Exception:  # decord missing, or it cannot demux this file
                    if reader is not _decord_read:
                        raise
            raise ClipError(f"{failure}{_last_line(noise())}") from None


@contextmanager
def native_stderr_captured():
    """Hold what C libraries (FFmpeg under decord and OpenCV) print on file descriptor 2.

    On a broken file they print lines such as `moov atom not found` with build paths before
    microfer's own error; the user should see one line. Yields a function returning what
    was captured so far, so an error message can quote its last line.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to hold
        yield lambda: ""
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            # pread: reading must not move the offset the C libraries write at
            yield lambda: os.pread(tmp.fileno(), 1 << 16, 0).decode("utf-8", "replace")
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _last_line(text: str) -> str:
    """The decoder's own reason, for quoting: its last message without the `[mov,mp4 @ 0x..]`
    context, skipping lines that point into the library's source (`video_reader.cc:83`)."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not re.search(r"\.\w+:\d+:", ln)]
    return f"; the decoder says: {lines[-1][:160]}" if lines else ""


def _decord_read(path: Path, indices: list[int]) -> list[np.ndarray]:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    frames = []
    for i in range(0, len(indices), _DECORD_BATCH):  # a few full-size frames at a time
        batch = vr.get_batch(indices[i : i + _DECORD_BATCH]).asnumpy()  # RGB
        frames += [bounded(cv2.cvtColor(f, cv2.COLOR_RGB2BGR)) for f in batch]
        del batch
    return frames


_DECORD_BATCH = 8


# OpenCV's seek is inexact in some codecs, so it reads on through gaps up to this many frames.
SEEK_GAP = 32


def _without_seeking(indices: list[int]) -> bool:
    """True when `_cv2_read` reaches every index by reading on from the start, never
    seeking. Then it decodes what decord's batch does (the same frames, pixel for pixel, on
    MPEG-4, H.264 and MJPEG files) at about half the CPU time: 60 frames of 640 x 480
    MPEG-4 in 105 ms of CPU against 217 ms (2-core machine shared with others)."""
    wanted = sorted(set(indices))
    return bool(wanted) and all(b - a <= SEEK_GAP for a, b in zip([-1] + wanted, wanted))


def _cv2_read(path: Path, indices: list[int]) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ClipError(f"cannot open video {path} (neither decord nor OpenCV can decode it)")
    try:
        wanted = sorted(set(indices))
        got: dict[int, np.ndarray] = {}
        pos = -1
        for idx in wanted:
            if idx != pos + 1:
                # Seeking is inexact in some codecs, so only jump when the gap is large.
                if idx - pos > SEEK_GAP:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
                    pos = idx - 1
                else:
                    while pos + 1 < idx:
                        if not cap.grab():
                            break
                        pos += 1
            ok, frame = cap.read()
            if not ok:
                raise ClipError(f"video {path}: frame index {idx} could not be decoded")
            pos = idx
            got[idx] = bounded(frame)
        return [got[i] for i in indices]
    finally:
        cap.release()


def frame_count(path: Path) -> int:
    with native_stderr_captured() as noise:
        try:
            return _count_frames(path)
        except ClipError as exc:
            raise ClipError(f"{exc}{_last_line(noise())}") from None


def _count_frames(path: Path) -> int:
    try:
        import decord

        return len(decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1))
    except Exception:
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise ClipError(
                    f"cannot open video {path} (neither decord nor OpenCV can decode it)"
                )
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if n <= 0:  # container without a frame count: count by decoding
                n = 0
                while cap.grab():
                    n += 1
            return n
        finally:
            cap.release()


def video_fps(path: Path, default: float | None = None) -> float:
    """A video file's frame rate from its container; `default` for frame folders (which have none)."""
    path = Path(path)
    if path.is_file():
        with native_stderr_captured():
            cap = cv2.VideoCapture(str(path))
            fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
            cap.release()
        if fps and 1 <= fps <= MAX_FPS:
            return float(fps)
    if default is None:
        raise MicroferError(
            f"{path}: no frame rate known for it (a frame folder, or a video without one); "
            "give it with --fps"
        )
    return float(default)


def sequential_frames(source: VideoSource):
    # stderr is held only while opening: a stream lasts long and progress bars write there
    with native_stderr_captured() as noise:
        cap = cv2.VideoCapture(str(source.path))
        if not cap.isOpened():
            raise ClipError(f"cannot open video {source.path}{_last_line(noise())}")
    try:
        for number in source.numbers:
            ok, frame = cap.read()
            if not ok:
                if number == source.numbers[0]:
                    raise ClipError(f"video {source.path}: its first frame could not be decoded")
                # containers overstate their frame count now and then: the stream ends here,
                # and says so (a truncated file would otherwise look like a short video)
                decoded = number - source.numbers[0]
                warnings.warn(
                    f"{source.path}: its container says {len(source.numbers)} frames, but only "
                    f"{decoded} could be decoded (a truncated or damaged file?); using those"
                )
                return
            yield number, bounded(frame)
    finally:
        cap.release()
