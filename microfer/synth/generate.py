"""Plan, render and write a synthetic dataset in a real layout, with its coding file and truth.

Determinism: the plan (which subject gets which emotions, clip names, which apexes are hidden)
comes from one generator seeded by (seed, layout); every recording is then rendered from its
own seed derived from (seed, layout, subject, clip), so a clip's pixels do not depend on the
order or number of the others. Frames are encoded with fixed parameters, the coding files are
written byte-identically (see coding_files.save_workbook).

The planning lives in `planning`, the output folder and the encoders in `output`, the truth
rows in `truth`; their names are imported here too, where callers have always found them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from microfer.errors import MicroferError
from microfer.synth import layouts as L
from microfer.synth.faces import Identity, load_identities
from microfer.synth.motion import Camera, Event, draw_pattern, iter_frames
from microfer.synth.output import (  # noqa: F401  (re-exported)
    JPEG_QUALITY,
    MARKER,
    CannotWrite,
    encode_image,
    prepare_out,
    progress_bar,
    remove_recorded,
    write_bytes_atomic,
    write_marker,
    write_video,
)
from microfer.synth.planning import (  # noqa: F401  (re-exported)
    AMPLITUDES,
    EventPlan,
    RecordingPlan,
    assign_emotions,
    derived_seed,
    first_frame_number,
    parse_amplitude,
    plan_casme_sq,
    plan_layout,
    short_clip_timing,
)
from microfer.synth.truth import (  # noqa: F401  (re-exported)
    TRUTH_COLUMNS,
    TRUTH_NAME,
    recording_rows,
    write_truth,
)


@dataclass(frozen=True)
class SynthSet:
    """What `generate` wrote."""

    layout: str
    root: Path
    coding_file: Path | None  # None for the video layout (no coding file exists for it)
    truth_file: Path
    n_clips: int


@dataclass(frozen=True)
class _Output:
    """Where and how one dataset's recordings are written."""

    layout: str
    spec: L.LayoutSpec
    root: Path
    ext: str  # frame (or video) file suffix


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
        path = write_video(root / plan.folder / f"{plan.name}.mp4", frames, fps, (w, h))
        return [path.relative_to(root).as_posix()]
    written = []
    for i, frame in enumerate(frames):
        rel = f"{plan.folder}/{L.frame_name(layout, plan.subject, plan.frame_number(i), ext)}"
        write_bytes_atomic(root / rel, encode_image(frame, ext))
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


def _frame_size(spec: L.LayoutSpec, frame_size: tuple[int, int] | None) -> tuple[int, ...]:
    size = tuple(frame_size) if frame_size else spec.frame_size
    if len(size) != 2 or min(size) < 160:
        raise MicroferError(
            f"frame size must be (width, height) of at least 160 px, got {frame_size}"
        )
    return size


def _frame_ext(layout: str, spec: L.LayoutSpec, image_ext: str | None) -> str:
    ext = (
        spec.image_ext
        if layout == "video" or image_ext is None
        else "." + image_ext.lstrip(".").lower()
    )
    if ext not in (".jpg", ".jpeg", ".png", ".bmp", ".mp4"):
        raise MicroferError(f"image format {image_ext!r} not supported; use jpg, png or bmp")
    return ext


def _write_coding(target: _Output, coded: list[L.CodedEvent], seed: int) -> Path | None:
    spec = target.spec
    if not spec.coding_name:
        return None
    coding_file = target.root / spec.coding_name
    writer = L.WRITERS[target.layout]
    if target.layout == "samm":
        writer(
            coded,
            coding_file,
            note=f"SYNTHETIC clips written by microfer synth (seed {seed}): not SAMM data",
        )
    else:
        writer(coded, coding_file)
    return coding_file


def _render_all(
    plans: list[RecordingPlan],
    identities: list[Identity],
    target: _Output,
    camera: Camera,
    workers: int | None,
    progress: bool,
) -> tuple[list[str], list[L.CodedEvent], list[dict]]:
    """Render every recording; the files written, the coding rows and the truth rows."""
    files: list[str] = []
    truth_rows: list[dict] = []
    coded: list[L.CodedEvent] = []

    def render(plan: RecordingPlan) -> list[str]:
        return _render_recording(
            plan,
            identities[plan.subject_index],
            target.layout,
            target.ext,
            target.root,
            target.spec.fps,
            camera,
        )

    # threads, not processes: remap, the noise and the encoders release the GIL, and the
    # identities need no copying; each recording has its own generator, so order is irrelevant
    n_workers = max(1, min(workers or os.cpu_count() or 1, 4))
    with (
        progress_bar(len(plans), f"synth {target.layout}", progress) as bar,
        ThreadPoolExecutor(n_workers) as pool,
    ):
        for plan, written in zip(plans, pool.map(render, plans)):
            files += written
            bar.update(1)
            rows, truth = recording_rows(
                plan, written, identities[plan.subject_index], target.layout, target.spec
            )
            coded += rows
            truth_rows += truth
    return files, coded, truth_rows


def _scaled_identities(
    spec: L.LayoutSpec,
    size: tuple[int, ...],
    subjects: int,
    faces: Path | None,
    seed: int,
    offset: int,
) -> list[Identity]:
    """One identity per subject, its face scaled with the frame as the layout's."""
    scale = min(size[0] / spec.frame_size[0], size[1] / spec.frame_size[1])
    return load_identities(
        subjects,
        faces=faces,
        frame_size=size,
        face_width=(spec.face_width[0] * scale, spec.face_width[1] * scale),
        seed=seed,
        offset=offset,
    )


def _start_marker(
    target: _Output,
    plans: list[RecordingPlan],
    size: tuple[int, ...],
    *,
    seed: int,
    subjects: int,
    clips_per_subject: int,
    amplitude: str | float,
    apex_unknown: float,
    clip_frames: tuple[int, int] | None,
) -> dict:
    """Write the marker of a run that has not finished yet (with every file it will write)."""
    spec = target.spec
    marker = {
        "tool": "microfer synth",
        "layout": target.layout,
        "seed": seed,
        "subjects": subjects,
        "clips_per_subject": clips_per_subject,
        "amplitude": str(amplitude),
        "frame_size": list(size),
        "apex_unknown": apex_unknown,
        "clip_frames": list(clip_frames or spec.clip_frames),
        "image_ext": target.ext,
        "coding_file": spec.coding_name,
        "n_clips": sum(len(p.events) for p in plans),
        "complete": False,
        "files": _planned_files(plans, target.layout, target.ext, spec),
    }
    write_marker(target.root, marker)
    return marker


# Over ~60 lines only by its signature and docstring (17 documented keyword options, the
# public API); the body is one call per step.
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
    size = _frame_size(spec, frame_size)
    target = _Output(layout, spec, out, _frame_ext(layout, spec, image_ext))
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
    identities = _scaled_identities(spec, size, subjects, faces, seed, identity_offset)
    prepare_out(out, force)
    n_events = sum(len(p.events) for p in plans)
    # written first, so that an interrupted run is still recognised (and cleaned) as ours
    marker = _start_marker(
        target,
        plans,
        size,
        seed=seed,
        subjects=subjects,
        clips_per_subject=clips_per_subject,
        amplitude=amplitude,
        apex_unknown=apex_unknown,
        clip_frames=clip_frames,
    )
    files, coded, truth_rows = _render_all(plans, identities, target, camera, workers, progress)
    coding_file = _write_coding(target, coded, seed)
    if coding_file is not None:
        files.append(spec.coding_name)
    write_truth(out, truth_rows)
    files.append(TRUTH_NAME)
    marker.update(complete=True, files=files)
    write_marker(out, marker)
    return SynthSet(layout, out, coding_file, out / TRUTH_NAME, n_events)


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
    write_marker(out, marker)
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
