"""Plan a synthetic long video: where its intervals, blinks, head moves and talking go.

Frame indices are 0-based. Every video draws from its own generator seeded by (seed,
layout, subject, video), in a fixed order: moving a draw changes every long video already
written with the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from microfer.errors import MicroferError
from microfer.synth import layouts as L
from microfer.synth.motion import Pattern
from microfer.synth.planning import AMPLITUDES, derived_seed


@dataclass(frozen=True)
class LongSpec:
    fps: float
    frame_size: tuple[int, int]
    face_width: tuple[float, float]
    coding_name: str
    emotions: tuple[str, ...]


SPECS = {
    "casme_sq": LongSpec(
        30.0,
        (640, 480),
        (180, 240),
        "CAS(ME)^2code_final-synth.csv",
        ("anger", "disgust", "happiness", "surprise"),
    ),
    "samm_lv": LongSpec(
        200.0,
        (640, 360),
        (127, 173),
        "SAMM_LongVideos_V2_Release-synth.csv",
        ("anger", "contempt", "happiness", "surprise", "disgust", "fear", "sadness"),
    ),
}

# eyelids close (upper lids down, lower lids a little up): a blink
BLINK = Pattern(
    "blink",
    (
        ((37, 38, 43, 44), (0.0, 1.0)),
        ((36, 39, 42, 45), (0.0, 0.3)),
        ((40, 41, 46, 47), (0.0, -0.3)),
    ),
    (),
)
SYLLABLES = [
    Pattern(
        "talk",
        (
            ((56, 57, 58, 65, 66, 67), (0.0, 1.0)),
            ((55, 59), (0.0, 0.6)),
            (range(6, 11), (0.0, 0.7)),
        ),
        (),
    ),
    Pattern(
        "talk",
        (((48, 60), (0.8, 0.0)), ((54, 64), (-0.8, 0.0)), ((56, 57, 58, 65, 66, 67), (0.0, 0.5))),
        (),
    ),
]


@dataclass
class Segment:
    kind: str  # micro | macro | blink | talk | head | away
    onset: int  # 0-based index in the video
    apex: int
    offset: int
    amplitude: float  # px (expressions, blinks, syllables); px of translation (head)
    emotion: str = ""
    clip: str = ""


@dataclass
class LongVideoPlan:
    subject: str
    subject_code: str
    subject_index: int
    video: str  # casme_sq: s15/15_0401girlcrashing; samm_lv: 006_1
    folder: str  # frames folder relative to the root
    n_frames: int
    seed: int
    segments: list[Segment] = field(default_factory=list)

    @property
    def intervals(self) -> list[Segment]:
        return [s for s in self.segments if s.kind in ("micro", "macro")]


def random_duration(rng: np.random.Generator, fps: float, lo: float, hi: float) -> int:
    return max(3, int(round(rng.uniform(lo, hi) * fps)))


def plan_video(
    layout: str,
    subject: str,
    code: str,
    index: int,
    video: str,
    folder: str,
    intervals: int,
    seed: int,
    emotions,
    face_leaves: bool = False,
    frame_width: int | None = None,
) -> LongVideoPlan:
    """Where everything happens in one long video (0-based frame indices)."""
    spec = SPECS[layout]
    fps = spec.fps
    rseed = derived_seed(seed, layout, subject, video)
    rng = np.random.default_rng([rseed, 1])
    items = segment_order(rng, intervals, face_leaves)
    away_px = float(frame_width or spec.frame_size[0])
    t = random_duration(rng, fps, 0.6, 1.2)
    segments: list[Segment] = []
    for kind in items:
        if kind == "talk":
            t = add_talk(segments, rng, fps, t)
            t += random_duration(rng, fps, 0.6, 1.4)
            continue
        segments.append(make_segment(kind, t, rng, fps, emotions, away_px))
        t = segments[-1].offset + random_duration(rng, fps, 0.6, 1.4)
    n = t + random_duration(rng, fps, 0.3, 0.8)
    return LongVideoPlan(subject, code, index, video, folder, n, rseed, segments)


def segment_order(rng: np.random.Generator, intervals: int, face_leaves: bool) -> list[str]:
    """The kinds of the video's segments in order: the intervals alternate micro / macro in
    a random order, most followed by a blink, every third by a head move; one talk."""
    kinds = ["micro" if k % 2 == 0 else "macro" for k in range(intervals)]
    kinds = [kinds[i] for i in rng.permutation(intervals)]
    items: list[str] = []
    for k, kind in enumerate(kinds):
        items.append(kind)
        if rng.random() < 0.8:
            items.append("blink")
        if k % 3 == 1:
            items.append("head")
    items.insert(int(rng.integers(1, len(items) + 1)), "talk")
    if face_leaves:
        items.insert(len(items) // 2, "away")
    return items


def make_segment(
    kind: str, t: int, rng: np.random.Generator, fps: float, emotions, away_px: float
) -> Segment:
    """One expression, blink, head move or exit from the frame, starting at frame `t`."""
    if kind in ("micro", "macro"):
        dur = (
            random_duration(rng, fps, 0.25, 0.45)
            if kind == "micro"
            else random_duration(rng, fps, 0.8, 2.5)
        )
        apex = t + max(1, min(dur - 1, int(round(rng.uniform(0.3, 0.6) * dur))))
        emotion = str(rng.choice(list(emotions)))
        amplitude = round(float(rng.uniform(*AMPLITUDES[kind])), 3)
        return Segment(kind, t, apex, t + dur, amplitude, emotion)
    if kind == "blink":
        dur = random_duration(rng, fps, 0.15, 0.3)
        return Segment(kind, t, t + dur // 2, t + dur, round(float(rng.uniform(5, 8)), 2))
    if kind == "head":
        dur = random_duration(rng, fps, 0.3, 0.6)
        return Segment(kind, t, t + dur // 2, t + dur, round(float(rng.uniform(6, 14)), 2))
    dur = random_duration(rng, fps, 2.0, 3.0)  # away
    return Segment(kind, t, t + dur // 2, t + dur, away_px)


def add_talk(segments: list[Segment], rng: np.random.Generator, fps: float, t: int) -> int:
    """Append a run of syllables starting at frame `t`; returns the frame where it ends."""
    end = t + random_duration(rng, fps, 1.0, 2.0)
    while t < end:
        dur = random_duration(rng, fps, 0.12, 0.25)
        segments.append(
            Segment(
                "talk",
                t,
                t + dur // 2,
                t + dur,
                round(float(rng.uniform(2, 4)), 2),
                emotion=str(int(rng.integers(len(SYLLABLES)))),
            )
        )
        t += dur - max(1, dur // 4)  # syllables run into each other
    return max(t, end)


@dataclass(frozen=True)
class VideoName:
    """Where one long video goes: its subject, its name and its frames folder."""

    subject: str
    code: str  # the subject as the coding file writes it
    index: int  # the subject's position (0-based)
    video: str  # casme_sq: s15/15_0401girlcrashing; samm_lv: 006_1
    folder: str  # frames folder relative to the root
    stem: str  # casme_sq: the clip-name stem (anger1); samm_lv: the video


def video_names(layout: str, subjects: int, videos_per_subject: int) -> list[VideoName]:
    """The long videos of a set, subject by subject, named as the layout names them."""
    out = []
    ids = L.subject_ids("samm" if layout == "samm_lv" else "casme_sq", subjects)
    for s, (subject, code) in enumerate(ids):
        for v in range(videos_per_subject):
            if layout == "casme_sq":
                vcode, stem, _ = L.CASME_SQ_VIDEOS[v % len(L.CASME_SQ_VIDEOS)]
                video = f"{subject}/{subject[1:]}_{vcode}"
                out.append(VideoName(subject, code, s, video, f"rawpic/{video}", stem))
            else:
                video = f"{subject}_{v + 1}"
                out.append(VideoName(subject, code, s, video, f"SAMM_longvideos/{video}", video))
    return out


def name_intervals(plan: LongVideoPlan, layout: str, stem: str) -> None:
    """Clip names of the plan's intervals, numbered in the video as the layout does."""
    for k, seg in enumerate(plan.intervals, 1):
        seg.clip = f"{stem}_{k}" if layout == "casme_sq" else f"{plan.video}_{k}"


def plan_long(
    layout: str,
    *,
    subjects: int,
    videos_per_subject: int,
    intervals: int,
    seed: int,
    face_leaves: bool = False,
    frame_width: int | None = None,
) -> list[LongVideoPlan]:
    if layout not in SPECS:
        raise MicroferError(
            f"long videos are written in the layouts {', '.join(SPECS)}, not {layout!r}"
        )
    if subjects < 1 or videos_per_subject < 1 or intervals < 1:
        raise MicroferError("need at least 1 subject, 1 video per subject and 1 interval per video")
    spec = SPECS[layout]
    plans = []
    for n in video_names(layout, subjects, videos_per_subject):
        plan = plan_video(
            layout,
            n.subject,
            n.code,
            n.index,
            n.video,
            n.folder,
            intervals,
            seed,
            spec.emotions,
            face_leaves=face_leaves,
            frame_width=frame_width,
        )
        name_intervals(plan, layout, n.stem)
        plans.append(plan)
    return plans
