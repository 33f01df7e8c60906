"""Plan, render and write a synthetic dataset in a real layout, with its coding file and truth.

Determinism: the plan (which subject gets which emotions, clip names, which apexes are hidden)
comes from one generator seeded by (seed, layout); every recording is then rendered from its
own seed derived from (seed, layout, subject, clip), so a clip's pixels do not depend on the
order or number of the others. Frames are encoded with fixed parameters, the coding files are
written byte-identically (see layouts.save_workbook).
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd

from microfer.errors import MicroferError
from microfer.io import atomic_path, write_csv, write_text
from microfer.synth import layouts as L
from microfer.synth.faces import Identity, load_identities
from microfer.synth.motion import Camera, Event, draw_pattern, iter_frames

MARKER = ".microfer-synth.json"
TRUTH_NAME = "synth_truth.csv"
TRUTH_COLUMNS = [
    "dataset",
    "subject",
    "clip",
    "onset",
    "apex",
    "offset",
    "emotion",
    "class3",
    "amplitude_px",
    "identity",
    "seed",
    "type",
    "coded_apex",
    "first_frame",
    "last_frame",
    "frame_dir",
]
AMPLITUDES = {"micro": (1.5, 3.0), "macro": (6.0, 10.0)}
JPEG_QUALITY = 95


@dataclass(frozen=True)
class SynthSet:
    """What `generate` wrote."""

    layout: str
    root: Path
    coding_file: Path | None  # None for the video layout (no coding file exists for it)
    truth_file: Path
    n_clips: int


@dataclass
class EventPlan:
    clip: str
    emotion: str
    onset: int  # 0-based index in the recording
    apex: int
    offset: int
    amplitude_px: float
    kind: str  # micro | macro
    apex_known: bool = True
    aus: str = ""  # action units of the drawn pattern (known once the pattern is drawn)


@dataclass
class RecordingPlan:
    subject: str  # canonical id (sub01)
    subject_code: str  # coding-file spelling ('01')
    subject_index: int
    name: str  # clip name (one-event layouts) or video name (casme_sq)
    folder: str  # frames folder relative to the root
    first_frame: int
    n_frames: int
    seed: int
    events: list[EventPlan] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def frame_number(self, index: int) -> int:
        return self.first_frame + index


def derived_seed(seed: int, *parts: str) -> int:
    """A 32-bit seed for one recording, stable across runs, platforms and processes."""
    key = "/".join(parts).encode()
    return int(np.random.SeedSequence([seed, zlib.crc32(key)]).generate_state(1)[0])


def parse_amplitude(amplitude: str | float) -> tuple[float, float]:
    if isinstance(amplitude, str) and amplitude in AMPLITUDES:
        return AMPLITUDES[amplitude]
    try:
        value = float(amplitude)
    except (TypeError, ValueError):
        raise MicroferError(
            f"amplitude must be micro, macro or a number of pixels, got {amplitude!r}"
        ) from None
    if not 0 < value <= 50:
        raise MicroferError(f"amplitude {value} px is out of range (0, 50]")
    return value, value


def _assign_emotions(
    emotions: Sequence[str], subjects: int, per_subject: int, rng: np.random.Generator
) -> list[list[str]]:
    """Cycle through `emotions` over all clips (balanced overall and within each subject),
    shuffled within each subject."""
    out = []
    for s in range(subjects):
        row = [emotions[(s * per_subject + k) % len(emotions)] for k in range(per_subject)]
        out.append([row[i] for i in rng.permutation(per_subject)])
    return out


def _short_clip_timing(
    rng: np.random.Generator, clip_frames: tuple[int, int]
) -> tuple[int, int, int, int]:
    """n_frames, onset, apex, offset (0-based) of a short clip with neutral frames around."""
    lo, hi = clip_frames
    n = int(rng.integers(lo, hi + 1))
    pre = int(rng.integers(2, 5))
    post = int(rng.integers(2, 5))
    if n - 1 - pre - post < 6:  # short clips: keep room for a rise and a fall of 3+ frames each
        pre = post = 2
    onset, offset = pre, n - 1 - post
    span = offset - onset
    apex = onset + int(round(rng.uniform(0.3, 0.7) * span))
    apex = min(max(apex, onset + 3), offset - 3)
    return n, onset, apex, offset


def _first_frame(layout: str, rng: np.random.Generator) -> int:
    if layout == "casme2":
        return int(rng.integers(1, 300))
    if layout == "samm":
        return int(rng.integers(100, 9000))
    if layout == "smic":
        return int(rng.integers(100_000, 18_000_000))
    if layout == "casme_sq":
        return 1
    return 0  # video: frame indices of the decoded stream


def plan_layout(
    layout: str,
    *,
    subjects: int,
    clips_per_subject: int,
    seed: int,
    amplitude: str | float = "micro",
    emotions: Sequence[str] | None = None,
    apex_unknown: float = 0.0,
    clip_frames: tuple[int, int] | None = None,
) -> list[RecordingPlan]:
    """Everything about a synthetic dataset except the pixels."""
    spec = L.get_layout(layout)
    clip_frames = tuple(clip_frames) if clip_frames else spec.clip_frames
    if subjects < 1 or clips_per_subject < 1:
        raise MicroferError(
            f"need at least 1 subject and 1 clip per subject, got {subjects} and {clips_per_subject}"
        )
    if not 0.0 <= apex_unknown <= 1.0:
        raise MicroferError(f"apex_unknown is a fraction of clips in [0, 1], got {apex_unknown}")
    if clip_frames[0] < 12 or clip_frames[1] < clip_frames[0]:
        raise MicroferError(f"clip length range {clip_frames} must satisfy 12 <= min <= max")
    emotions = [L.native_emotion(spec, e) for e in (emotions or spec.emotions)]
    amp_lo, amp_hi = parse_amplitude(amplitude)
    rng = np.random.default_rng([seed, zlib.crc32(layout.encode())])
    ids = L.subject_ids(layout, subjects)
    plans: list[RecordingPlan] = []
    if layout == "casme_sq":
        plans = _plan_casme_sq(spec, ids, clips_per_subject, seed, emotions, rng)
    else:
        per_subject = _assign_emotions(emotions, subjects, clips_per_subject, rng)
        for s, ((subject, code), emos) in enumerate(zip(ids, per_subject)):
            names = L.clip_names(layout, subject, [e.lower() for e in emos], rng)
            for name, emotion in zip(names, emos):
                rseed = derived_seed(seed, layout, subject, name)
                crng = np.random.default_rng([rseed, 1])
                n, onset, apex, offset = _short_clip_timing(crng, clip_frames)
                amp = round(float(crng.uniform(amp_lo, amp_hi)), 3)
                kind = "micro" if amp_hi <= AMPLITUDES["micro"][1] else "macro"
                extra = {"inducement": int(name.split("_")[1])} if layout == "samm" else {}
                plans.append(
                    RecordingPlan(
                        subject=subject,
                        subject_code=code,
                        subject_index=s,
                        name=name,
                        folder=L.frame_dir(layout, subject, name, emotion),
                        first_frame=_first_frame(layout, crng),
                        n_frames=n,
                        seed=rseed,
                        events=[EventPlan(name, emotion, onset, apex, offset, amp, kind)],
                        extra=extra,
                    )
                )
    events = [e for p in plans for e in p.events]
    if apex_unknown > 0 and layout not in ("smic", "video"):
        k = min(len(events), max(1, int(round(apex_unknown * len(events)))))
        for i in rng.choice(len(events), size=k, replace=False):
            events[int(i)].apex_known = False
    return plans


def _plan_casme_sq(
    spec: L.LayoutSpec,
    ids,
    intervals_per_subject: int,
    seed: int,
    emotions: Sequence[str],
    rng: np.random.Generator,
) -> list[RecordingPlan]:
    """Long videos holding two intervals each (one macro, one micro, in random order)."""
    plans = []
    n_videos = (intervals_per_subject + 1) // 2
    if n_videos > len(L.CASME_SQ_VIDEOS):
        raise MicroferError(
            f"casme_sq holds at most {2 * len(L.CASME_SQ_VIDEOS)} intervals per subject "
            f"(two in each of its {len(L.CASME_SQ_VIDEOS)} videos), got {intervals_per_subject}"
        )
    for s, (subject, code) in enumerate(ids):
        offset = int(rng.integers(len(L.CASME_SQ_VIDEOS)))
        for v in range(n_videos):
            vcode, stem, theme = L.CASME_SQ_VIDEOS[(offset + v) % len(L.CASME_SQ_VIDEOS)]
            video = f"{subject}/{subject[1:]}_{vcode}"
            rseed = derived_seed(seed, "casme_sq", subject, vcode)
            crng = np.random.default_rng([rseed, 1])
            kinds = ["macro", "micro"] if crng.random() < 0.5 else ["micro", "macro"]
            t = int(crng.integers(8, 16))
            events = []
            for j, kind in enumerate(kinds):
                dur = int(crng.integers(18, 37)) if kind == "macro" else int(crng.integers(7, 14))
                onset, offset_ = t, t + dur
                apex = onset + max(2, min(dur - 2, int(round(crng.uniform(0.3, 0.6) * dur))))
                lo, hi = AMPLITUDES[kind]
                emotion = (
                    theme
                    if theme in emotions and crng.random() < 0.7
                    else str(crng.choice(list(emotions)))
                )
                events.append(
                    EventPlan(
                        f"{stem}_{j + 1}",
                        emotion,
                        onset,
                        apex,
                        offset_,
                        round(float(crng.uniform(lo, hi)), 3),
                        kind,
                    )
                )
                t = offset_ + int(crng.integers(10, 26))
            n = t - 10 + int(crng.integers(8, 16))
            plans.append(
                RecordingPlan(
                    subject=subject,
                    subject_code=code,
                    subject_index=s,
                    name=video,
                    folder=L.frame_dir("casme_sq", subject, "", video=video),
                    first_frame=1,
                    n_frames=n,
                    seed=rseed,
                    events=events,
                    extra={"video": video},
                )
            )
    return plans


# ---- output folder safety --------------------------------------------------------------------------


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
    _remove_recorded(out, previous)


def _remove_recorded(out: Path, previous: dict) -> None:
    for sub in previous.get("parts", []):
        sub_marker = out / sub / MARKER
        if sub_marker.is_file():
            _remove_recorded(out / sub, json.loads(sub_marker.read_text(encoding="utf-8")))
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


# ---- writing ------------------------------------------------------------------------------------------


def _encode(image: np.ndarray, ext: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext in (".jpg", ".jpeg") else []
    if ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise MicroferError(f"OpenCV cannot encode {ext} images")
    return buf.tobytes()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class _CannotWrite(Exception):
    pass


def _write_video(path: Path, frames, fps: float, size: tuple[int, int]) -> Path:
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
                    raise _CannotWrite  # atomic_path drops the temporary file, target is untouched
        except _CannotWrite:
            continue
        return target
    raise MicroferError(
        f"OpenCV cannot write video files here (tried mp4v .mp4 and MJPG .avi) for {path}"
    )


def _render_recording(
    plan: RecordingPlan,
    identity: Identity,
    layout: str,
    ext: str,
    root: Path,
    fps: float,
    camera: Camera,
) -> list[str]:
    """Render one recording and write its frames; returns the files written (relative)."""
    rng = np.random.default_rng([plan.seed, 2])
    pattern_rng = np.random.default_rng([plan.seed, 3])
    events = [
        Event(draw_pattern(e.emotion, pattern_rng), e.onset, e.apex, e.offset, e.amplitude_px)
        for e in plan.events
    ]
    for e, ev in zip(plan.events, events):
        e.aus = L.format_aus([ev.pattern.action_units])
    frames = iter_frames(identity, events, plan.n_frames, rng, camera)
    if layout == "video":
        h, w = identity.image.shape[:2]
        path = _write_video(root / plan.folder / f"{plan.name}.mp4", frames, fps, (w, h))
        return [path.relative_to(root).as_posix()]
    written = []
    for i, frame in enumerate(frames):
        rel = f"{plan.folder}/{L.frame_name(layout, plan.subject, plan.frame_number(i), ext)}"
        _write_bytes(root / rel, _encode(frame, ext))
        written.append(rel)
    return written


def _planned_files(
    plans: Sequence[RecordingPlan], layout: str, ext: str, spec: L.LayoutSpec
) -> list[str]:
    files = []
    for plan in plans:
        if layout == "video":
            files += [f"{plan.folder}/{plan.name}.mp4", f"{plan.folder}/{plan.name}.avi"]
        else:
            files += [
                f"{plan.folder}/{L.frame_name(layout, plan.subject, plan.frame_number(i), ext)}"
                for i in range(plan.n_frames)
            ]
    return files + ([spec.coding_name] if spec.coding_name else []) + [TRUTH_NAME]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="clip",
        file=sys.stderr,
        disable=not enabled or None,
        dynamic_ncols=True,
    )


def generate(
    layout: str,
    out: Path,
    *,
    subjects: int = 4,
    clips_per_subject: int = 6,
    seed: int = 0,
    faces: Path | None = None,
    amplitude: str | float = "micro",
    emotions: Sequence[str] | None = None,
    frame_size: tuple[int, int] | None = None,
    apex_unknown: float = 0.0,
    progress: bool = True,
    clip_frames: tuple[int, int] | None = None,
    image_ext: str | None = None,
    force: bool = False,
    identity_offset: int = 0,
    camera: Camera = Camera(),
    workers: int | None = None,
) -> SynthSet:
    """Write a synthetic dataset in `layout`'s real on-disk layout under `out`.

    Returns where the coding file and the ground truth (synth_truth.csv) are. `out` must be
    empty, absent, or a previous synth output (its recorded files are replaced); `force`
    writes into any folder without deleting anything.

    amplitude: "micro" (1.5-3 px peak displacement at the apex), "macro" (6-10 px) or pixels.
    frame_size: (W, H); default the layout's (SAMM is written at 960x540, not 2040x1088).
    apex_unknown: fraction of clips whose coding-file apex is '/' (CASME II) or -1 (SAMM,
        CAS(ME)^2); synth_truth.csv keeps the real apex (column coded_apex is then empty).
    clip_frames: (min, max) frames per clip; default the layout's (24-40, SMIC 16-26).
    image_ext: override the frame format (e.g. "jpg" for SMIC); adapters reading the coding
        file expect the real one, so only for readers that scan the folders.
    identity_offset: first photo to use (datasets generated together get different faces).
    camera: sensor noise, head drift and flicker (Camera(0, 0, 0, 0) renders clean frames).
    workers: rendering threads (default: the CPU count, at most 4); output does not depend on it.
    """
    spec = L.get_layout(layout)
    out = Path(out)
    size = tuple(frame_size) if frame_size else spec.frame_size
    if len(size) != 2 or min(size) < 160:
        raise MicroferError(
            f"frame size must be (width, height) of at least 160 px, got {frame_size}"
        )
    ext = (
        spec.image_ext
        if layout == "video" or image_ext is None
        else "." + image_ext.lstrip(".").lower()
    )
    if ext not in (".jpg", ".jpeg", ".png", ".bmp", ".mp4"):
        raise MicroferError(f"image format {image_ext!r} not supported; use jpg, png or bmp")
    plans = plan_layout(
        layout,
        subjects=subjects,
        clips_per_subject=clips_per_subject,
        seed=seed,
        amplitude=amplitude,
        emotions=emotions,
        apex_unknown=apex_unknown,
        clip_frames=clip_frames,
    )
    scale = min(size[0] / spec.frame_size[0], size[1] / spec.frame_size[1])
    face_width = (spec.face_width[0] * scale, spec.face_width[1] * scale)
    identities = load_identities(
        subjects,
        faces=faces,
        frame_size=size,
        face_width=face_width,
        seed=seed,
        offset=identity_offset,
    )
    prepare_out(out, force)
    n_events = sum(len(p.events) for p in plans)
    marker = {
        "tool": "microfer synth",
        "layout": layout,
        "seed": seed,
        "subjects": subjects,
        "clips_per_subject": clips_per_subject,
        "amplitude": str(amplitude),
        "frame_size": list(size),
        "apex_unknown": apex_unknown,
        "clip_frames": list(clip_frames or spec.clip_frames),
        "image_ext": ext,
        "coding_file": spec.coding_name,
        "n_clips": n_events,
        "complete": False,
        "files": _planned_files(plans, layout, ext, spec),
    }
    # written first, so that an interrupted run is still recognised (and cleaned) as ours
    write_text(out / MARKER, json.dumps(marker, indent=1) + "\n")
    files: list[str] = []
    truth_rows = []
    coded: list[L.CodedEvent] = []

    def render(plan: RecordingPlan) -> list[str]:
        return _render_recording(
            plan, identities[plan.subject_index], layout, ext, out, spec.fps, camera
        )

    # threads, not processes: remap, the noise and the encoders release the GIL, and the
    # identities need no copying; each recording has its own generator, so order is irrelevant
    n_workers = max(1, min(workers or os.cpu_count() or 1, 4))
    apex_coded = layout not in ("smic", "video")  # SMIC-E has no apex column, videos no coding file
    with (
        _progress(len(plans), f"synth {layout}", progress) as bar,
        ThreadPoolExecutor(n_workers) as pool,
    ):
        for plan, written in zip(plans, pool.map(render, plans)):
            files += written
            bar.update(1)
            identity = identities[plan.subject_index]
            last = plan.frame_number(plan.n_frames - 1)
            for e in plan.events:
                onset, apex, offset = (
                    plan.frame_number(e.onset),
                    plan.frame_number(e.apex),
                    plan.frame_number(e.offset),
                )
                coded.append(
                    L.CodedEvent(
                        plan.subject_code,
                        e.clip,
                        onset,
                        apex if e.apex_known else None,
                        offset,
                        e.emotion,
                        e.aus,
                        plan.first_frame,
                        last,
                        e.kind,
                        dict(plan.extra),
                    )
                )
                truth_rows.append(
                    {
                        "dataset": spec.dataset,
                        "subject": plan.subject,
                        "clip": e.clip,
                        "onset": onset,
                        "apex": apex,
                        "offset": offset,
                        "emotion": e.emotion,
                        "class3": L.class3(layout, e.emotion),
                        "amplitude_px": e.amplitude_px,
                        "identity": identity.name,
                        "seed": plan.seed,
                        "type": e.kind,
                        "coded_apex": apex if e.apex_known and apex_coded else "",
                        "first_frame": plan.first_frame,
                        "last_frame": last,
                        "frame_dir": plan.folder if layout != "video" else written[-1],
                    }
                )
    coding_file = None
    if spec.coding_name:
        coding_file = out / spec.coding_name
        writer = L.WRITERS[layout]
        if layout == "samm":
            writer(
                coded,
                coding_file,
                note=f"SYNTHETIC clips written by microfer synth (seed {seed}): not SAMM data",
            )
        else:
            writer(coded, coding_file)
        files.append(spec.coding_name)
    truth = pd.DataFrame(truth_rows, columns=TRUTH_COLUMNS).sort_values(
        ["subject", "clip", "onset"]
    )
    write_csv(out / TRUTH_NAME, truth)
    files.append(TRUTH_NAME)
    marker.update(complete=True, files=files)
    write_text(out / MARKER, json.dumps(marker, indent=1) + "\n")
    return SynthSet(
        layout=layout,
        root=out,
        coding_file=coding_file,
        truth_file=out / TRUTH_NAME,
        n_clips=n_events,
    )


# composite: each dataset's native emotions, balanced over negative / positive / surprise
COMPOSITE_EMOTIONS = {
    "casme2": ["disgust", "happiness", "surprise", "repression", "happiness", "surprise"],
    "samm": ["Anger", "Happiness", "Surprise", "Contempt", "Happiness", "Surprise"],
    "smic": ["negative", "positive", "surprise"],
}


def generate_composite(
    out: Path,
    *,
    subjects_per_dataset: int = 3,
    clips_per_subject: int = 6,
    seed: int = 0,
    faces: Path | None = None,
    amplitude: str | float = "micro",
    progress: bool = True,
    clip_frames: tuple[int, int] | None = None,
    image_ext: str | None = None,
    force: bool = False,
) -> dict[str, SynthSet]:
    """out/casme2, out/samm, out/smic with the three composite classes balanced in each.

    The datasets start from different photos (where there are enough) so one face does not
    appear as a subject of two datasets.
    """
    out = Path(out)
    prepare_out(out, force)
    marker = {
        "tool": "microfer synth",
        "layout": "composite",
        "seed": seed,
        "parts": list(COMPOSITE_EMOTIONS),
        "files": [],
    }
    write_text(out / MARKER, json.dumps(marker, indent=1) + "\n")
    sets = {}
    for k, layout in enumerate(COMPOSITE_EMOTIONS):
        sets[layout] = generate(
            layout,
            out / layout,
            subjects=subjects_per_dataset,
            clips_per_subject=clips_per_subject,
            seed=seed,
            faces=faces,
            amplitude=amplitude,
            emotions=COMPOSITE_EMOTIONS[layout],
            progress=progress,
            clip_frames=clip_frames,
            image_ext=image_ext,
            force=force,
            identity_offset=k * subjects_per_dataset,
        )
    return sets
