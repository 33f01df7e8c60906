"""Frame sources: image-sequence folders and video files, read lazily by frame number.

A `FrameSource` knows which absolute frame numbers it holds (`numbers`) and decodes only
the ones asked for (`read`). Frame numbers are what the coding files use:
- image folder: the number in the file name (`img46.jpg` -> 46, `006_05562.jpg` -> 5562);
- video file: the 0-based frame index, plus `first_number` when told otherwise;
- animated GIF: frames 1..n (an animated image is a sequence of images, numbered like
  image files; onset/apex pairs circulate as two-frame GIFs: `--onset 1 --apex 2`);
- a folder of exactly two images whose names carry no number (an onset/apex pair such as
  `onset.png`, `apex.png`): frames 1 and 2, the one named "onset" first, else by name.

A folder may hold several sequences side by side (CASME II ships raw `img46.jpg` and
cropped `reg_img46.jpg`); they are told apart by the file-name text before the number
(the "prefix"), and the caller picks one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import cv2
import numpy as np

from microfer.clip.frames import bounded, check_numbers, frame_ranges  # noqa: F401
from microfer.clip.video_file import (  # noqa: F401  (importable from here too)
    VideoSource,
    frame_count,
    native_stderr_captured,
    sequential_frames,
)
from microfer.errors import ClipError, LayoutError
from microfer.io import jpeg_is_complete
from microfer.records import Sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
GIF_EXTENSION = ".gif"  # read as a video by OpenCV, numbered from 1 (module docstring)
VIDEO_EXTENSIONS = (
    ".gif",
    ".avi",
    ".mp4",
    ".mov",
    ".mkv",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".m4v",
    ".webm",
)

# Non-greedy prefix, then the trailing digits of the file stem: "reg_img46" -> ("reg_img", "46").
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


class FrameSource(Protocol):
    path: Path
    numbers: list[int]

    def read(self, numbers: Iterable[int]) -> list[np.ndarray]: ...


def read_image(path: Path) -> np.ndarray:
    """Decode one image file to BGR uint8, at most MAX_FRAME_SIDE px on its longer side;
    ClipError naming the file when it is unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClipError(f"cannot read frame {path}: {exc.strerror or exc}") from None
    if not data:
        raise ClipError(f"frame {path} is empty (0 bytes)")
    if path.suffix.lower() in (".jpg", ".jpeg") and not jpeg_is_complete(data):
        raise ClipError(f"frame {path} is truncated or corrupt (JPEG without end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ClipError(
            f"frame {path} is corrupt or not an image ({len(data)} bytes could not be decoded)"
        )
    return bounded(image)


def list_sequences(folder: Path) -> dict[str, dict[int, Path]]:
    """Numbered image files of `folder` grouped by prefix: {prefix: {number: path}}."""
    groups: dict[str, dict[int, Path]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            # a FIFO or device named like a frame would block or stream forever on read
            if not entry.is_file():
                continue
            m = _NUMBERED.match(stem)
            if m is None:
                continue
            groups.setdefault(m.group(1), {})[int(m.group(2))] = Path(entry.path)
    return groups


@dataclass
class ImageFolderSource:
    """An image sequence in one folder, files numbered by the integer in their name."""

    path: Path
    files: dict[int, Path]
    prefix: str = ""
    numbers: list[int] = field(init=False)

    def __post_init__(self):
        self.numbers = sorted(self.files)

    def read(self, numbers: Iterable[int]) -> list[np.ndarray]:
        numbers = [int(n) for n in numbers]
        check_numbers(self, numbers)
        return [read_image(self.files[n]) for n in numbers]

    def file(self, number: int) -> Path:
        return self.files[number]


@dataclass
class ArraySource:
    """Frames already in memory (the single-clip API): numbers default to 0..n-1."""

    frames: Sequence[np.ndarray]
    numbers: list[int] = field(default_factory=list)
    path: Path = Path("<arrays>")

    def __post_init__(self):
        if not self.numbers:
            self.numbers = list(range(len(self.frames)))
        if len(self.numbers) != len(self.frames):
            raise ClipError(
                f"{len(self.frames)} frames but {len(self.numbers)} frame numbers were given"
            )
        self._index = {int(n): i for i, n in enumerate(self.numbers)}
        self.numbers = sorted(self._index)

    def read(self, numbers: Iterable[int]) -> list[np.ndarray]:
        numbers = [int(n) for n in numbers]
        check_numbers(self, numbers)
        out = []
        for n in numbers:
            image = np.asarray(self.frames[self._index[n]])
            if image.dtype != np.uint8:
                raise ClipError(f"frame {n} has dtype {image.dtype}; expected uint8 BGR")
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            out.append(bounded(image))
        return out


def _image_pair(folder: Path) -> dict[int, Path] | None:
    """{1: onset, 2: apex} of a folder holding exactly two images with no number in their
    names (the one named "onset" or "apex" says which is which, else name order); else None."""
    images = sorted(
        Path(e.path)
        for e in os.scandir(folder)
        if not e.name.startswith(".")
        and e.is_file()
        and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
    )
    if len(images) != 2:
        return None
    if "apex" in images[0].stem.lower() or "onset" in images[1].stem.lower():
        images.reverse()
    return {1: images[0], 2: images[1]}


def open_frames(path, prefix: str | None = None, first_number: int | None = None) -> FrameSource:
    """Open an image-sequence folder or a video file as a FrameSource.

    `prefix` picks one sequence in a folder holding several (file-name text before the
    number); without it the folder must hold exactly one. `first_number` is the frame
    number of a video's first frame (default 0; 1 for an animated GIF).
    """
    path = Path(path)
    if path.is_dir():
        groups = list_sequences(path)
        pair = _image_pair(path) if not groups and prefix is None else None
        if pair is not None:
            return ImageFolderSource(path, pair, "")
        if not groups:
            raise LayoutError(
                f"{path}: no numbered image files ({'/'.join(IMAGE_EXTENSIONS)}) in this folder"
            )
        if prefix is not None:
            if prefix not in groups:
                raise LayoutError(
                    f"{path}: no frames named '{prefix}<number>'; "
                    f"this folder has {_describe_groups(groups)}"
                )
            return ImageFolderSource(path, groups[prefix], prefix)
        if len(groups) > 1:
            raise LayoutError(
                f"{path} holds several image sequences ({_describe_groups(groups)}); "
                "say which one with the file-name prefix"
            )
        ((only, files),) = groups.items()
        return ImageFolderSource(path, files, only)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise LayoutError(f"{path} is a single image; expected a folder of frames or a video")
        if path.stat().st_size == 0:
            raise ClipError(f"video {path} is empty (0 bytes)")
        if first_number is None:
            first_number = 1 if path.suffix.lower() == GIF_EXTENSION else 0
        return VideoSource(path, frame_count(path), first_number)
    raise LayoutError(f"{path} does not exist (expected a folder of frames or a video file)")


def _describe_groups(groups: dict[str, dict[int, Path]]) -> str:
    return ", ".join(f"'{p}<n>' x{len(f)}" for p, f in sorted(groups.items()))


def sample_location(root: Path, sample: Sample) -> tuple[Path, str | None]:
    """(folder or video path, prefix or None) that a sample's frame_template points to."""
    template = sample.frame_template
    rel_dir, file_part = os.path.split(template)
    if "{" not in file_part:
        if "{" in rel_dir:
            raise LayoutError(
                f"{sample.key}: frame_template '{template}' has {{frame}} outside the file name"
            )
        return Path(root) / template, None  # a video file (or a folder of one sequence)
    return Path(root) / rel_dir, file_part[: file_part.index("{")]


def frames_for_sample(root: Path, sample: Sample) -> FrameSource:
    """The FrameSource of one sample, from its frame_template relative to `root`."""
    location, prefix = sample_location(root, sample)
    if prefix and location.is_dir():
        groups = list_sequences(location)
        if prefix not in groups:
            # CASME II ships raw frames (img46.jpg) and cropped ones (reg_img46.jpg) in the
            # same folder names: a folder holding only the cropped variant is still this clip.
            variants = [p for p in groups if p.endswith(prefix)]
            if len(variants) == 1:
                prefix = variants[0]
    try:
        return open_frames(location, prefix=prefix)
    except LayoutError as exc:
        raise LayoutError(f"{sample.key}: {exc}") from None


def stream_frames(source: FrameSource, prefetch: int = 8) -> Iterable[tuple[int, np.ndarray]]:
    """(frame number, BGR frame) of every frame of `source`, in order, one at a time.

    A long recording never sits in memory: image files are decoded one by one and a video
    is read sequentially (no seeking). Decoding runs in a background thread `prefetch`
    frames ahead (OpenCV's decoders release the GIL), so it overlaps the caller's work.
    A frame that cannot be decoded ends the stream with a ClipError naming it.
    """
    if isinstance(source, VideoSource):
        produce = sequential_frames(source)
    elif isinstance(source, ImageFolderSource):
        produce = ((n, read_image(source.files[n])) for n in source.numbers)
    else:
        produce = ((n, source.read([n])[0]) for n in source.numbers)
    if prefetch <= 0:
        yield from produce
        return
    yield from prefetched(produce, prefetch)


def prefetched(items, depth: int, on_full=None):
    """Iterate `items` in a daemon thread, at most `depth` ahead; its exceptions re-raised here.

    `on_full`: called instead of waiting when the consumer is `depth` behind, and the item is
    dropped (a live camera goes on whether or not it is read)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def run():
        try:
            for item in items:
                if stop.is_set():
                    return
                if on_full is None:
                    q.put(item)
                    continue
                try:
                    q.put_nowait(item)
                except queue.Full:
                    on_full()
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)
