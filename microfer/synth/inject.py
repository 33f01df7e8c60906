"""Long videos for spotting made from REAL face videos: known micro and macro expressions
injected into a recording that keeps its own blinks, head motion, speech and lighting.

    from microfer.synth.inject import generate_injected
    s = generate_injected("casme_sq", Path("/tmp/inj"), [Path("talk.mp4")], subjects=10,
                          intervals=6, seed=1, seconds=25)

Each long video is one background video (the given ones in turn, one per subject), at its own
frame rate, played forward then backward (ping-pong) from a random point of the cycle when
`seconds` asks for more than it holds. The expressions are the long synth's (same draws of
kind, duration, emotion and timing: `long_plans.make_segment`) and move the landmarks the
same way (`motion.dense_field`), but the field is built on each frame's own landmarks (dlib),
so the expression follows the real head. Amplitudes are the synth's pixels scaled by the
real face's width over the layout's synthetic face width, so that an aligned crop sees the
same relative motion. An interval and one frame either side must have a face found in every
frame; intervals never overlap. Written in the layout's folders and coding file, with
synth_truth.csv, so `spot-eval` reads them as it reads `synth --long-videos`;
synth_nuisances.csv lists only what is known of the background: the ping-pong turns and the
frames without a face (its blinks, speech and head moves are real and not annotated).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from microfer.errors import MicroferError
from microfer.io import file_sha256
from microfer.synth.background import Background, check_holdable, pingpong, read_background, turns
from microfer.synth.faces import Identity
from microfer.synth.generate import SynthSet
from microfer.synth.long_plans import (
    SPECS,
    LongVideoPlan,
    Segment,
    make_segment,
    name_intervals,
    random_duration,
    video_names,
)
from microfer.synth.long_videos import NUISANCE_NAME, LongRows, frame_name, render_events
from microfer.synth.motion import Event, dense_field, time_profile, warp_by_field
from microfer.synth.output import (
    encode_image,
    prepare_out,
    progress_bar,
    write_bytes_atomic,
    write_marker,
)
from microfer.synth.planning import derived_seed
from microfer.synth.truth import TRUTH_NAME

FPS_TOLERANCE = 0.01  # relative: 29.97 fps is read as 30


def _free_starts(has_face: np.ndarray, length: int) -> np.ndarray:
    """ok[t]: frames t-1 .. t+length+1 all have a face (the interval plus a frame each side)."""
    n = len(has_face)
    missing = np.concatenate([[0], np.cumsum(~has_face)])
    t = np.arange(n)
    lo, hi = np.maximum(t - 1, 0), np.minimum(t + length + 2, n)
    ok = (missing[hi] - missing[lo] == 0) & (t >= 1) & (t + length + 1 < n)
    return ok


def plan_injection(
    has_face: np.ndarray,
    fps: float,
    intervals: int,
    rng: np.random.Generator,
    emotions,
    amplitude_scale: float,
) -> list[Segment]:
    """Micro and macro intervals (alternating, random order) spread over the video: neutral
    gaps of 0.6-1.4 s between them, stretched at random to fill the video, never on or next
    to a frame without a face. MicroferError when they do not fit."""
    if intervals < 1:
        raise MicroferError("need at least 1 interval per video")
    has_face = np.asarray(has_face, bool)
    kinds = ["micro" if k % 2 == 0 else "macro" for k in range(intervals)]
    kinds = [kinds[i] for i in rng.permutation(intervals)]
    drawn = [make_segment(k, 0, rng, fps, emotions, 0.0) for k in kinds]
    gaps = np.array([random_duration(rng, fps, 0.6, 1.4) for _ in range(intervals + 1)], float)
    need = sum(s.offset + 1 for s in drawn) + gaps.sum()
    spare = len(has_face) - need
    if spare > 0:
        # half the slack is spread over the gaps; the rest is room for skipping faceless frames
        gaps += 0.5 * spare * rng.dirichlet(np.ones(len(gaps)))
    placed: list[Segment] = []
    t = int(gaps[0])
    for s, gap in zip(drawn, gaps[1:]):
        starts = np.flatnonzero(_free_starts(has_face, s.offset)[t:])
        if not len(starts):
            raise MicroferError(
                f"{len(has_face)} frames ({len(has_face) / fps:.1f} s, {int(has_face.sum())} with a "
                f"face) hold only {len(placed)} of the {intervals} intervals asked for"
            )
        t += int(starts[0])
        amplitude = round(s.amplitude * amplitude_scale, 3)
        placed.append(Segment(s.kind, t, t + s.apex, t + s.offset, amplitude, s.emotion, s.clip))
        t = placed[-1].offset + int(gap)
    return placed


def injected_frames(bg: Background, timeline: np.ndarray, events: list[Event]):
    """The background's frames along `timeline`, each warped by the events active in it; the
    field is rebuilt on that frame's landmarks, so it moves with the head."""
    n = len(timeline)
    profiles = [time_profile(n, e.onset, e.apex, e.offset) for e in events]
    for t, frame in enumerate(bg.frames(timeline)):
        active = [(e, float(p[t])) for e, p in zip(events, profiles) if p[t] > 0]
        if active:
            face = Identity("background", frame, bg.landmarks[int(timeline[t])])
            frame = warp_by_field(
                frame, [(dense_field(face, e.pattern, e.amplitude_px), a) for e, a in active]
            )
        yield frame


@dataclass
class InjectedVideo:
    plan: LongVideoPlan
    background: Background
    timeline: np.ndarray  # source frame (0-based) of each output frame


def _check_fps(bg: Background, layout: str) -> None:
    fps = SPECS[layout].fps
    if abs(bg.fps - fps) > FPS_TOLERANCE * fps:
        raise MicroferError(
            f"background video {bg.path}: {bg.fps:g} fps, but spot-eval reads the {layout} layout "
            f"at {fps:g} fps; give a {fps:g} fps video or the layout of its rate "
            f"({', '.join(f'{k} {v.fps:g} fps' for k, v in SPECS.items())})"
        )


def plan_videos(
    layout: str,
    backgrounds: list[Background],
    *,
    subjects: int,
    intervals: int,
    seed: int,
    seconds: float | None,
) -> list[InjectedVideo]:
    """One video per subject, the backgrounds in turn; where each starts and what it holds."""
    spec = SPECS[layout]
    videos = []
    for name in video_names(layout, subjects, 1):
        bg = backgrounds[name.index % len(backgrounds)]
        n = int(round(seconds * bg.fps)) if seconds else bg.n_frames
        rseed = derived_seed(seed, layout, name.subject, name.video, "inject")
        rng = np.random.default_rng([rseed, 1])
        extend = n > bg.n_frames
        start = int(rng.integers(2 * max(1, bg.n_frames - 1))) if extend else 0
        check_holdable(bg, n, start)
        timeline = pingpong(bg.n_frames, n, start)
        scale = bg.face_width / float(np.mean(spec.face_width))
        try:
            segments = plan_injection(
                bg.has_face[timeline], bg.fps, intervals, rng, spec.emotions, scale
            )
        except MicroferError as exc:
            raise MicroferError(
                f"background video {bg.path}: {exc}; ask fewer intervals or more --seconds"
            ) from None
        plan = LongVideoPlan(
            name.subject, name.code, name.index, name.video, name.folder, n, rseed, segments
        )
        name_intervals(plan, layout, name.stem)
        videos.append(InjectedVideo(plan, bg, timeline))
    return videos


def _known_nuisances(v: InjectedVideo) -> list[dict]:
    """Ping-pong turns and runs of frames without a face (frame numbers start at 1)."""
    row = {"subject": v.plan.subject, "video": v.plan.folder, "amplitude_px": 0.0}
    out = [
        {**row, "kind": "pingpong_turn", "onset": t + 1, "offset": t + 1} for t in turns(v.timeline)
    ]
    lost = ~v.background.has_face[v.timeline]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], lost.astype(int), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):
        out.append({**row, "kind": "no_face", "onset": int(a) + 1, "offset": int(b)})
    return out


def _marker(layout: str, videos: list[InjectedVideo], **settings) -> dict:
    files = [
        f"{v.plan.folder}/{frame_name(layout, v.plan, i + 1)}"
        for v in videos
        for i in range(v.plan.n_frames)
    ]
    spec = SPECS[layout]
    backgrounds = {str(v.background.path): v.background for v in videos}
    return {
        "tool": "microfer synth",
        "layout": layout,
        "long_videos": True,
        "background_videos": [
            {
                "path": p,
                "sha256": file_sha256(bg.path) if bg.path.is_file() else None,
                "fps": bg.fps,
                "frames": bg.n_frames,
                "frames_with_face": int(bg.has_face.sum()),
                "face_width_px": round(bg.face_width, 1),
            }
            for p, bg in backgrounds.items()
        ],
        **settings,
        "fps": spec.fps,
        "coding_file": spec.coding_name,
        "complete": False,
        "files": files + [spec.coding_name, TRUTH_NAME, NUISANCE_NAME],
    }


def generate_injected(
    layout: str,
    out: Path,
    background_videos: list[Path | Background],
    *,
    subjects: int = 10,
    intervals: int = 6,
    seed: int = 0,
    seconds: float | None = None,
    fps: float | None = None,
    progress: bool = True,
    force: bool = False,
) -> SynthSet:
    """Write long videos in `layout` (casme_sq | samm_lv) made of the background videos with
    known intervals injected, the coding file, synth_truth.csv and synth_nuisances.csv.
    A background already read (`read_background`) is used as it is: its faces are not found
    again."""
    if layout not in SPECS:
        raise MicroferError(
            f"long videos are written in the layouts {', '.join(SPECS)}, not {layout!r}"
        )
    if not background_videos:
        raise MicroferError("give at least one background video")
    if seconds is not None and seconds <= 0:
        raise MicroferError(f"--seconds must be positive, got {seconds}")
    out = Path(out)
    backgrounds = []
    for path in background_videos:
        bg = path if isinstance(path, Background) else read_background(Path(path), fps)
        _check_fps(bg, layout)
        backgrounds.append(bg)
    videos = plan_videos(
        layout, backgrounds, subjects=subjects, intervals=intervals, seed=seed, seconds=seconds
    )
    prepare_out(out, force)
    marker = _marker(
        layout, videos, seed=seed, subjects=subjects, intervals=intervals, seconds=seconds
    )
    write_marker(out, marker)
    rows = LongRows()
    with progress_bar(len(videos), f"synth {layout} on real videos", progress) as bar:
        for v in videos:
            events, aus = render_events(v.plan, np.random.default_rng([v.plan.seed, 3]))
            for i, frame in enumerate(injected_frames(v.background, v.timeline, events)):
                rel = f"{v.plan.folder}/{frame_name(layout, v.plan, i + 1)}"
                write_bytes_atomic(out / rel, encode_image(frame, ".jpg"))
            rows.add_video(v.plan, aus, f"real:{v.background.path.name}", layout)
            rows.nuisances.extend(_known_nuisances(v))
            bar.update(1)
    coding_file = out / SPECS[layout].coding_name
    rows.write(out, layout, coding_file, seed)
    marker.update(complete=True)
    write_marker(out, marker)
    return SynthSet(layout, out, coding_file, out / TRUTH_NAME, len(rows.truth))
