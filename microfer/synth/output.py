"""The output folder of a synth run: its marker, safe clean-up, and the frame/video writers.

Shared by the short-clip driver (generate) and the long videos (long_videos).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from microfer.errors import MicroferError
from microfer.io import atomic_path, write_text

MARKER = ".microfer-synth.json"
JPEG_QUALITY = 95


def write_marker(out: Path, marker: dict) -> None:
    write_text(out / MARKER, json.dumps(marker, indent=1) + "\n")


def prepare_out(out: Path, force: bool) -> None:
    """Refuse a non-empty folder that a previous synth run did not write (unless forced);
    in a previous synth output, remove only the files that run recorded."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MicroferError(f"output {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    marker = out / MARKER
    if not marker.is_file():
        if force:
            return  # write over; never delete what we did not write
        raise MicroferError(
            f"output folder {out} is not empty and is not a previous microfer synth output "
            f"(no {MARKER}); choose an empty folder or pass --force to write into it"
        )
    try:
        previous = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MicroferError(f"{marker} is unreadable ({exc}); remove it or pass --force") from None
    remove_recorded(out, previous)


def remove_recorded(out: Path, previous: dict) -> None:
    for sub in previous.get("parts", []):
        sub_marker = out / sub / MARKER
        if sub_marker.is_file():
            remove_recorded(out / sub, json.loads(sub_marker.read_text(encoding="utf-8")))
    dirs = set()
    root = out.resolve()
    for rel in previous.get("files", []):
        path = out / rel
        if root not in path.resolve().parents:
            continue  # a tampered marker must not reach outside the folder
        if path.is_file():
            path.unlink()
        dirs.update(p for p in path.parents if root in p.resolve().parents)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()  # only empty folders go
        except OSError:
            pass
    (out / MARKER).unlink(missing_ok=True)


def encode_image(image: np.ndarray, ext: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext in (".jpg", ".jpeg") else []
    if ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise MicroferError(f"OpenCV cannot encode {ext} images")
    return buf.tobytes()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class CannotWrite(Exception):
    pass


def write_video(path: Path, frames, fps: float, size: tuple[int, int]) -> Path:
    """mp4 (mp4v); MJPG .avi where this OpenCV build cannot write mp4."""
    frames = list(frames)
    for fourcc, ext in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        target = path.with_suffix(ext)
        try:
            with atomic_path(target) as tmp:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
                opened = writer.isOpened()
                for f in frames if opened else ():
                    writer.write(f)
                writer.release()
                if not opened or tmp.stat().st_size == 0:
                    raise CannotWrite  # atomic_path drops the temporary file, target is untouched
        except CannotWrite:
            continue
        return target
    raise MicroferError(
        f"OpenCV cannot write video files here (tried mp4v .mp4 and MJPG .avi) for {path}"
    )


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="clip",
        file=sys.stderr,
        disable=not enabled or None,
        dynamic_ncols=True,
    )
