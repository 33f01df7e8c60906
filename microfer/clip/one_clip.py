"""One clip: frames -> aligned onset/apex faces + motion (`prepare_clip`).

The library API, also used by single-clip prediction:
1. read the onset frame (and the apex frame, or every frame onset..offset when the apex
   has to be spotted);
   Every frame read must have the onset frame's size (a folder mixing frame sizes is
   refused, naming the frame: one crop position cannot fit both);
2. detect the face and fit 68 landmarks on the ONSET frame only, and fit ONE similarity
   transform (face.alignment_transform) that is applied to every frame of the clip, so
   per-frame landmark jitter never shows up as motion;
3. use the annotated apex when it is a frame inside (onset, offset], else spot it
   (apex.spot_apex on the motion-vs-onset curve) and say so (apex_source = "spotted").
   A dataset's annotated apex outside the clip is replaced by a spotted one with a note
   (coding files carry such apexes); an apex the caller chose (`strict_apex=True`, e.g.
   `microfer predict --apex`) is used as given or refused, never replaced. Before
   spotting, the face is looked for every few frames (a cheap detection around the onset
   face, bisected to the exact frame where it goes or comes back); frames without it
   are left out of spotting and listed in the notes;
4. the face is verified on the apex frame: its aligned crop still shows the onset's face
   in place (`face_checks.apex_face_held`: no detection needed), or a face is detected
   where the onset face was and its landmarks lie near the aligned position (within
   `APEX_FACE_TOLERANCE` eye distances); else ClipError (stage "face") -- never a flow
   from a face-less crop;
5. optical flow onset -> apex on the aligned grey faces, and its optical strain.

Frames whose aligned crop still shows the onset's face (`microfer.clip.tracking`) count
as having it without a detection, in steps 3 and 4 alike.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from microfer.clip.apex import DEFAULT_SPOT, SPOT_METHODS, motion_curve, spot_apex
from microfer.clip.circulated import (
    DEFAULT_FLOW_FORMAT,
    FLOW_UNITS_OF,
    check_flow_format,
    circulated_flow,
)
from microfer.clip.face import (
    alignment_transform,
    detect_faces,
    fit_landmarks,
    landmark_problem,
    warp_face,
)
from microfer.clip.face_checks import apex_face_held, check_apex_face, face_presence
from microfer.clip.motion import DEFAULT_FLOW, FLOW_METHODS, optical_flow, optical_strain
from microfer.clip.tracking import blur_sigma, crop_shift, grey_crop, same_face
from microfer.clip.video import ArraySource, frame_ranges
from microfer.errors import ClipError, MicroferError
from microfer.records import FaceLandmarks, PreparedClip

# Bump when a change in this stage changes what it produces: it is part of the cache key.
# prepare-5: face presence followed by crop correlation (a detection only where it fails);
# frames above 2048 px shrunk on decode
PREPARE_VERSION = "prepare-5"


@dataclass(frozen=True)
class PrepareSettings:
    size: int = 128  # side of the aligned face crop, px
    flow: str = DEFAULT_FLOW  # "dis" | "tvl1" (see motion.py for the measurements)
    spot_method: str = DEFAULT_SPOT  # "fd" | "diff" | "flow" (see apex.py)
    upsample: int = 0  # dlib detector pyramid levels up (1 finds faces < 80 px)
    detect_max_side: int = 640  # detection runs on a copy at most this large
    motion_curve: str = "spotted"  # "spotted": curve only when the apex is spotted; "always"
    version: str = PREPARE_VERSION
    # "pixels": flow and strain at the crop size, in pixels; "minmax28": the circulated
    # STSTNet representation (28x28, min-max per channel per image; clip/circulated.py)
    flow_format: str = DEFAULT_FLOW_FORMAT

    def __post_init__(self):
        # settings also arrive from bundle.json and settings.json: check types, not only values
        for name in ("size", "upsample", "detect_max_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise MicroferError(f"prepare setting {name} must be a whole number, not {value!r}")
        for name in ("flow", "spot_method", "motion_curve", "version", "flow_format"):
            if not isinstance(getattr(self, name), str):
                raise MicroferError(
                    f"prepare setting {name} must be text, not {getattr(self, name)!r}"
                )
        if self.flow not in FLOW_METHODS:
            raise MicroferError(
                f"unknown flow method '{self.flow}'; expected one of {', '.join(FLOW_METHODS)}"
            )
        if self.spot_method not in SPOT_METHODS:
            raise MicroferError(
                f"unknown spotting method '{self.spot_method}'; expected {', '.join(SPOT_METHODS)}"
            )
        if self.motion_curve not in ("spotted", "always"):
            raise MicroferError(
                f"motion_curve must be 'spotted' or 'always', not '{self.motion_curve}'"
            )
        if not 32 <= self.size <= 1024:
            raise MicroferError(f"face size {self.size} is outside 32..1024 px")
        if not 0 <= self.upsample <= 3:
            raise MicroferError(f"upsample {self.upsample} is outside 0..3 detector levels")
        if not 64 <= self.detect_max_side <= 8192:
            raise MicroferError(f"detect_max_side {self.detect_max_side} is outside 64..8192 px")
        check_flow_format(self.flow_format)

    @property
    def flow_units(self) -> str:
        """What the prepared clips' flow holds (PreparedClip.flow_units)."""
        return FLOW_UNITS_OF[self.flow_format]

    def key(self) -> str:
        """Short hash of every setting (the version included): the cache folder name."""
        doc = asdict(self)
        if doc["flow_format"] == DEFAULT_FLOW_FORMAT:
            del doc["flow_format"]  # caches made before the setting existed keep their key
        text = json.dumps(doc, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


# A face that moved less than this (crop px: about 1 px of a 640 x 480 frame) between two
# frames keeps the detector's box, and only the landmarks, fitted on the frame itself, are
# redone. 24 synthetic 640 x 480 clips (head drift 0.3-3 px) spotted this way gave the same
# onset/apex/offset, landmarks and flow, bit for bit, as a fresh detection on every onset.
TRACKED_SHIFT_PX = 0.5


def _fail(stage: str, message: str) -> ClipError:
    return ClipError(message, stage=stage)


class _Timer:
    """Adds elapsed milliseconds per stage into a dict (or does nothing without one)."""

    def __init__(self, timings: dict | None):
        self.timings = timings
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + (now - self.t) * 1000
        self.t = now


# Over ~60 lines only by its signature and docstring: the body reads the stages in order.
def prepare_clip(
    frames,
    onset: int,
    apex: int | None,
    offset: int,
    settings: PrepareSettings = PrepareSettings(),
    frame_numbers: Sequence[int] | None = None,
    *,
    timings: dict | None = None,
    strict_apex: bool = False,
    memo: dict | None = None,
    motion: bool = True,
) -> PreparedClip:
    """Prepare one clip; see the module docstring. Raises ClipError with the reason.

    `frames`: a video.FrameSource, or BGR uint8 arrays numbered `frame_numbers` (default
    0..n-1). `timings` accumulates ms per stage. `strict_apex`: the apex is the caller's
    own, used as given or refused; else an unusable (dataset) apex is spotted instead, with
    a note. `memo`: a dict shared by calls on the SAME frames and settings (predict's scan,
    then its spotted interval): decoded frames and onset faces are reused, and a later
    onset frame where the first call's face has not moved (`TRACKED_SHIFT_PX`) takes that
    face's detection box, fitting only its landmarks. `motion=False`: no flow and strain
    (zero-size arrays), for a scan that only spots (`clip_motion` adds them).
    """
    source = (
        frames
        if hasattr(frames, "read") and hasattr(frames, "numbers")
        else ArraySource(list(frames), list(frame_numbers or []))
    )
    where = str(getattr(source, "path", "clip"))
    onset, offset = int(onset), int(offset)
    available = _available_frames(source, where, onset, offset)
    notes: list[str] = []
    apex_ok = _apex_usable(where, apex, onset, offset, available, strict_apex, notes)
    want_curve = not apex_ok or settings.motion_curve == "always"
    numbers = available if want_curve else [onset, int(apex)]

    timer = _Timer(timings)
    images = _decode(source, where, numbers, memo)
    timer.lap("decode")
    face = _onset_face(images[0], onset, where, settings, memo, timer, notes)
    M = alignment_transform(face.points, settings.size)
    faces = [warp_face(im, M, settings.size) for im in images]
    grey = [grey_crop(f, blur_sigma(settings.size)) for f in faces]
    if memo is not None:
        memo.setdefault("aligned", (onset, face, dict(zip(numbers, grey))))
    timer.lap("warp")

    known = int(apex) if apex_ok else None
    curve, no_face, apex_number = _apex_of(
        where, numbers, images, faces, grey, face.box, known, want_curve, settings, timer
    )
    if want_curve and len(available) < offset - onset + 1:
        notes.append(f"{offset - onset + 1 - len(available)} frame(s) missing in {onset}..{offset}")
    if no_face:
        notes.append(f"no face in frame(s) {frame_ranges(no_face)}: left out of apex spotting")

    apex_index = numbers.index(apex_number)
    if not apex_face_held(grey[0], grey[apex_index], face.points, M):
        check_apex_face(
            where, images[apex_index], apex_number, face.box, M, settings.size, settings.upsample
        )
    timer.lap("detect")
    if motion:
        flow, strain = clip_motion(faces[0], faces[apex_index], settings)
    else:
        flow, strain = np.zeros((0, 0, 2), np.float32), np.zeros((0, 0), np.float32)
    timer.lap("flow")
    return PreparedClip(
        onset=onset,
        apex=apex_number,
        offset=offset,
        apex_source="annotated" if apex_ok else "spotted",
        onset_face=faces[0],
        apex_face=faces[apex_index],
        flow=flow,
        strain=strain,
        landmarks=face.points.astype(np.float32),
        transform=M.astype(np.float32),
        face_box=tuple(int(v) for v in face.box),
        motion_curve=curve,
        notes="; ".join(notes),
        no_face_frames=tuple(int(n) for n in no_face),
        flow_units=settings.flow_units,
    )


def clip_motion(onset_face, apex_face, settings: PrepareSettings):
    """Flow and strain onset -> apex, in the representation the settings ask for."""
    flow = optical_flow(onset_face, apex_face, settings.flow)
    strain = optical_strain(flow)
    if settings.flow_format != DEFAULT_FLOW_FORMAT:
        flow, strain = circulated_flow(flow, strain)
    return flow, strain


def _apex_of(where, numbers, images, faces, grey, box, apex, want_curve, settings, timer):
    """(motion curve, frames without the face, apex frame): `apex` when given, else spotted
    on the curve of the frames where the onset's face is found."""
    curve, no_face, keep = np.zeros(0, np.float32), [], list(range(len(numbers)))
    if apex is None:  # spotting: frames without the face take no part in it
        no_face = face_presence(
            images, numbers, box, settings.upsample, lambda i: same_face(grey[0], grey[i])
        )
        timer.lap("detect")
        if len(no_face) == len(numbers) - 1:
            raise _fail(
                "face",
                f"{where}: no face found in frames {frame_ranges(no_face)} after the onset "
                f"frame {numbers[0]}; nothing to spot an apex in",
            )
    if want_curve:
        left_out = set(no_face)
        keep = [i for i, n in enumerate(numbers) if n not in left_out]
        curve = np.zeros(len(numbers), np.float32)
        curve[keep] = motion_curve(
            [faces[i] for i in keep],
            settings.spot_method,
            reference=0,
            grey=[grey[i] for i in keep],
        )
    if apex is None:
        apex = numbers[keep[spot_apex(curve[keep])]]
    timer.lap("spot")
    return curve, no_face, apex


def _available_frames(source, where: str, onset: int, offset: int) -> list[int]:
    """The source's frame numbers in onset..offset; ClipError when they cannot make a clip."""
    if offset <= onset:
        raise _fail(
            "frames", f"{where}: offset {offset} is not after onset {onset} (too few frames)"
        )
    available = [n for n in source.numbers if onset <= n <= offset]
    if onset not in available:
        raise _fail("frames", f"{where}: onset frame {onset} is not available")
    if len(available) < 2:
        raise _fail(
            "frames",
            f"{where}: only {len(available)} frame(s) in {onset}..{offset}; need at least 2",
        )
    return available


def _apex_usable(where, apex, onset, offset, available, strict_apex, notes) -> bool:
    """True when `apex` can be used as the apex; a caller's own (strict) apex that cannot is
    refused, a dataset's is replaced by a spotted one (with a note)."""
    apex_ok = apex is not None and onset < int(apex) <= offset and int(apex) in available
    if apex is not None and not apex_ok:
        why = (
            "equals the onset"
            if int(apex) == onset
            else "is outside onset..offset"
            if not onset <= int(apex) <= offset
            else "is not an available frame"
        )
        if strict_apex:
            raise _fail(
                "frames",
                f"{where}: the given apex {apex} {why} (onset {onset}, offset {offset}); a given "
                f"apex is used as given, never replaced: give one in {onset + 1}..{offset}, "
                "or none to have it spotted",
            )
        notes.append(f"annotated apex {apex} {why}: spotted instead")
    return apex_ok


def _tracked_face(image, onset: int, memo: dict | None) -> FaceLandmarks | None:
    """The onset face of the memo's first call, its landmarks fitted again on this onset
    frame, when the face has not moved between the two (see TRACKED_SHIFT_PX); else None."""
    first, face, grey = (memo or {}).get("aligned", (None, None, {}))
    if onset not in grey or first not in grey:
        return None
    if not same_face(grey[first], grey[onset]) or crop_shift(grey[first], grey[onset]) > (
        TRACKED_SHIFT_PX
    ):
        return None
    return FaceLandmarks(box=face.box, points=fit_landmarks(image, face.box), n_faces=face.n_faces)


def _decode(source, where: str, numbers: list[int], memo: dict | None) -> list[np.ndarray]:
    """The frames `numbers`, decoded once per memo; all must have the onset frame's size."""
    decoded = memo.setdefault("frames", {}) if memo is not None else {}
    todo = [n for n in numbers if n not in decoded]
    if todo:
        decoded.update(zip(todo, source.read(todo)))
    images = [decoded[n] for n in numbers]
    first = images[0]
    for number, image in zip(numbers, images):
        if image.shape[:2] != first.shape[:2]:
            file = getattr(source, "files", {}).get(number)
            raise _fail(
                "frames",
                f"{where}: frame {number}{f' ({file.name})' if file else ''} is "
                f"{image.shape[1]}x{image.shape[0]} px but the onset frame {numbers[0]} is "
                f"{first.shape[1]}x{first.shape[0]} px; the frame size changes "
                "inside the clip, so one face crop cannot fit both",
            )
    return images


def _onset_face(image, onset: int, where: str, settings, memo, timer, notes) -> FaceLandmarks:
    """The onset frame's face and landmarks (found once per memo), checked usable."""
    found = memo.setdefault("onset_faces", {}) if memo is not None else {}
    face = found.get(onset) or _tracked_face(image, onset, memo)
    if face is None:
        boxes = detect_faces(image, settings.upsample, settings.detect_max_side)
        timer.lap("detect")
        if not boxes:
            raise _fail("face", f"{where}: no face found in the onset frame {onset}")
        face = FaceLandmarks(
            box=boxes[0], points=fit_landmarks(image, boxes[0]), n_faces=len(boxes)
        )
    found[onset] = face
    if face.n_faces > 1:
        notes.append(f"{face.n_faces} faces in the onset frame: kept the largest")
    timer.lap("landmarks")
    problem = landmark_problem(face, image.shape)
    if problem:
        raise _fail("face", f"{where}: onset frame {onset}: {problem}")
    return face
