"""Plan a synthetic dataset: subjects, clip names, emotions and frame timings, no pixels.

The plan comes from one generator seeded by (seed, layout); each recording's timings come
from its own seed derived from (seed, layout, subject, clip), so a clip does not depend on
the order or number of the others. The random draws below happen in a fixed order: moving
one changes every synthetic dataset already written with the same seed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from microfer.errors import MicroferError
from microfer.synth import layouts as L

AMPLITUDES = {"micro": (1.5, 3.0), "macro": (6.0, 10.0)}


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


@dataclass(frozen=True)
class _Subject:
    """One subject as the plan needs it."""

    id: str  # canonical id (sub01)
    code: str  # coding-file spelling ('01')
    index: int


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


def assign_emotions(
    emotions: Sequence[str], subjects: int, per_subject: int, rng: np.random.Generator
) -> list[list[str]]:
    """Cycle through `emotions` over all clips (balanced overall and within each subject),
    shuffled within each subject."""
    out = []
    for s in range(subjects):
        row = [emotions[(s * per_subject + k) % len(emotions)] for k in range(per_subject)]
        out.append([row[i] for i in rng.permutation(per_subject)])
    return out


def short_clip_timing(
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


def first_frame_number(layout: str, rng: np.random.Generator) -> int:
    if layout == "casme2":
        return int(rng.integers(1, 300))
    if layout == "samm":
        return int(rng.integers(100, 9000))
    if layout == "smic":
        return int(rng.integers(100_000, 18_000_000))
    if layout == "casme_sq":
        return 1
    return 0  # video: frame indices of the decoded stream


def _check_plan_args(
    subjects: int, clips_per_subject: int, apex_unknown: float, clip_frames: tuple[int, int]
) -> None:
    if subjects < 1 or clips_per_subject < 1:
        raise MicroferError(
            f"need at least 1 subject and 1 clip per subject, got {subjects} and {clips_per_subject}"
        )
    if not 0.0 <= apex_unknown <= 1.0:
        raise MicroferError(f"apex_unknown is a fraction of clips in [0, 1], got {apex_unknown}")
    if clip_frames[0] < 12 or clip_frames[1] < clip_frames[0]:
        raise MicroferError(f"clip length range {clip_frames} must satisfy 12 <= min <= max")


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
    _check_plan_args(subjects, clips_per_subject, apex_unknown, clip_frames)
    emotions = [L.native_emotion(spec, e) for e in (emotions or spec.emotions)]
    amplitudes = parse_amplitude(amplitude)
    rng = np.random.default_rng([seed, zlib.crc32(layout.encode())])
    ids = L.subject_ids(layout, subjects)
    if layout == "casme_sq":
        plans = plan_casme_sq(spec, ids, clips_per_subject, seed, emotions, rng)
    else:
        per_subject = assign_emotions(emotions, subjects, clips_per_subject, rng)
        plans = []
        for s, ((subject, code), emos) in enumerate(zip(ids, per_subject)):
            names = L.clip_names(layout, subject, [e.lower() for e in emos], rng)
            plans += [
                _plan_short_clip(
                    layout, _Subject(subject, code, s), name, emotion, seed, amplitudes, clip_frames
                )
                for name, emotion in zip(names, emos)
            ]
    if apex_unknown > 0 and layout not in ("smic", "video"):
        _hide_apexes([e for p in plans for e in p.events], apex_unknown, rng)
    return plans


def _plan_short_clip(
    layout: str,
    subject: _Subject,
    name: str,
    emotion: str,
    seed: int,
    amplitudes: tuple[float, float],
    clip_frames: tuple[int, int],
) -> RecordingPlan:
    """One clip holding one expression (every layout but casme_sq)."""
    amp_lo, amp_hi = amplitudes
    rseed = derived_seed(seed, layout, subject.id, name)
    crng = np.random.default_rng([rseed, 1])
    n, onset, apex, offset = short_clip_timing(crng, clip_frames)
    amp = round(float(crng.uniform(amp_lo, amp_hi)), 3)
    kind = "micro" if amp_hi <= AMPLITUDES["micro"][1] else "macro"
    extra = {"inducement": int(name.split("_")[1])} if layout == "samm" else {}
    return RecordingPlan(
        subject=subject.id,
        subject_code=subject.code,
        subject_index=subject.index,
        name=name,
        folder=L.frame_dir(layout, subject.id, name, emotion),
        first_frame=first_frame_number(layout, crng),
        n_frames=n,
        seed=rseed,
        events=[EventPlan(name, emotion, onset, apex, offset, amp, kind)],
        extra=extra,
    )


def _hide_apexes(events: list[EventPlan], apex_unknown: float, rng: np.random.Generator) -> None:
    """Mark a fraction of the events (at least one) as coded without an apex."""
    k = min(len(events), max(1, int(round(apex_unknown * len(events)))))
    for i in rng.choice(len(events), size=k, replace=False):
        events[int(i)].apex_known = False


def plan_casme_sq(
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
        first = int(rng.integers(len(L.CASME_SQ_VIDEOS)))
        for v in range(n_videos):
            video = L.CASME_SQ_VIDEOS[(first + v) % len(L.CASME_SQ_VIDEOS)]
            plans.append(_plan_casme_sq_video(_Subject(subject, code, s), video, seed, emotions))
    return plans


def _plan_casme_sq_video(
    subject: _Subject, video_entry: tuple[str, str, str], seed: int, emotions: Sequence[str]
) -> RecordingPlan:
    vcode, stem, theme = video_entry
    video = f"{subject.id}/{subject.id[1:]}_{vcode}"
    rseed = derived_seed(seed, "casme_sq", subject.id, vcode)
    crng = np.random.default_rng([rseed, 1])
    kinds = ["macro", "micro"] if crng.random() < 0.5 else ["micro", "macro"]
    t = int(crng.integers(8, 16))
    events = []
    for j, kind in enumerate(kinds):
        event = _casme_sq_event(crng, f"{stem}_{j + 1}", kind, t, theme, emotions)
        events.append(event)
        t = event.offset + int(crng.integers(10, 26))
    n = t - 10 + int(crng.integers(8, 16))
    return RecordingPlan(
        subject=subject.id,
        subject_code=subject.code,
        subject_index=subject.index,
        name=video,
        folder=L.frame_dir("casme_sq", subject.id, "", video=video),
        first_frame=1,
        n_frames=n,
        seed=rseed,
        events=events,
        extra={"video": video},
    )


def _casme_sq_event(
    crng: np.random.Generator,
    clip: str,
    kind: str,
    onset: int,
    theme: str,
    emotions: Sequence[str],
) -> EventPlan:
    """One interval starting at `onset`; the video's theme is its emotion most of the time."""
    dur = int(crng.integers(18, 37)) if kind == "macro" else int(crng.integers(7, 14))
    offset = onset + dur
    apex = onset + max(2, min(dur - 2, int(round(crng.uniform(0.3, 0.6) * dur))))
    lo, hi = AMPLITUDES[kind]
    emotion = (
        theme if theme in emotions and crng.random() < 0.7 else str(crng.choice(list(emotions)))
    )
    return EventPlan(
        clip, emotion, onset, apex, offset, round(float(crng.uniform(lo, hi)), 3), kind
    )
