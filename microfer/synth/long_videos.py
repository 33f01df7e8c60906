"""Synthetic LONG videos for spotting: several macro and micro intervals at known frames among
neutral stretches, blinks, head movements and talking-like mouth motion.

    from microfer.synth.long_videos import generate_long
    s = generate_long("samm_lv", Path("/tmp/samm_lv"), subjects=10, seed=0)
    s.coding_file   # SAMM_LongVideos_V2_Release-synth.csv, read like the real csv
    s.truth_file    # synth_truth.csv (one row per interval; type macro|micro)
                    # synth_nuisances.csv: the blinks, head moves, talking (not intervals)

Layouts (frames as the real datasets store them; sizes smaller than the real ones):
- casme_sq: `rawpic/s15/15_0401girlcrashing/img1.jpg ...`, 30 fps, 640x480, coding file
  `CAS(ME)^2code_final-synth.csv` (11 columns, no header, as the real one);
- samm_lv: `SAMM_longvideos/006_1/006_1_0001.jpg ...`, 200 fps, written at 640x360 (the real
  frames are 2040x1088), coding file `SAMM_LongVideos_V2_Release-synth.csv` (the real
  csv's preamble and columns; V2 has no emotion column).

Every video holds `intervals` expressions alternating micro / macro in a random order (micro
0.25-0.45 s at 1.5-3 px, macro 0.8-2.5 s at 6-10 px, as the short-clip synth), each after
a neutral gap of 0.6-1.4 s, and between them the nuisances a real recording has: about one
blink per interval (eyelids, 0.15-0.3 s), a head movement every third interval (6-14 px and
1-3 degrees within 0.3-0.6 s, to a new resting pose) and one stretch of talking per video
(1-2 s of jaw / lip syllables, 0.12-0.25 s each, 2-4 px). None overlap. `face_leaves` adds
a stretch where the head moves out of the frame and comes back.
"""

from __future__ import annotations

import csv
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from microfer.errors import MicroferError
from microfer.io import atomic_path, write_csv, write_text
from microfer.synth import layouts as L
from microfer.synth.faces import load_identities
from microfer.synth.generate import (
    AMPLITUDES,
    MARKER,
    TRUTH_COLUMNS,
    TRUTH_NAME,
    SynthSet,
    _encode,
    _progress,
    _write_bytes,
    derived_seed,
    prepare_out,
)
from microfer.synth.motion import Camera, Event, Pattern, draw_pattern, iter_frames

NUISANCE_NAME = "synth_nuisances.csv"
LONG_LAYOUTS = ("casme_sq", "samm_lv")


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


def _frames(rng: np.random.Generator, fps: float, lo: float, hi: float) -> int:
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
    t = _frames(rng, fps, 0.6, 1.2)
    segments: list[Segment] = []
    for kind in items:
        if kind in ("micro", "macro"):
            dur = _frames(rng, fps, 0.25, 0.45) if kind == "micro" else _frames(rng, fps, 0.8, 2.5)
            apex = t + max(1, min(dur - 1, int(round(rng.uniform(0.3, 0.6) * dur))))
            emotion = str(rng.choice(list(emotions)))
            segments.append(
                Segment(
                    kind, t, apex, t + dur, round(float(rng.uniform(*AMPLITUDES[kind])), 3), emotion
                )
            )
        elif kind == "blink":
            dur = _frames(rng, fps, 0.15, 0.3)
            segments.append(
                Segment(kind, t, t + dur // 2, t + dur, round(float(rng.uniform(5, 8)), 2))
            )
        elif kind == "head":
            dur = _frames(rng, fps, 0.3, 0.6)
            segments.append(
                Segment(kind, t, t + dur // 2, t + dur, round(float(rng.uniform(6, 14)), 2))
            )
        elif kind == "away":
            dur = _frames(rng, fps, 2.0, 3.0)
            segments.append(
                Segment(kind, t, t + dur // 2, t + dur, float(frame_width or spec.frame_size[0]))
            )
        else:  # talk: a run of syllables
            end = t + _frames(rng, fps, 1.0, 2.0)
            while t < end:
                dur = _frames(rng, fps, 0.12, 0.25)
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
            t = max(t, end)
            t += _frames(rng, fps, 0.6, 1.4)
            continue
        t = segments[-1].offset + _frames(rng, fps, 0.6, 1.4)
    n = t + _frames(rng, fps, 0.3, 0.8)
    return LongVideoPlan(subject, code, index, video, folder, n, rseed, segments)


def head_path(plan: LongVideoPlan, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) head translation x, y (px) and rotation (deg): raised-cosine steps to new poses."""
    path = np.zeros((plan.n_frames, 3))
    pose = np.zeros(3)
    i = np.arange(plan.n_frames)
    for s in plan.segments:
        if s.kind not in ("head", "away"):
            continue
        if s.kind == "head":
            angle = rng.uniform(0, 2 * np.pi)
            step = np.array(
                [
                    s.amplitude * np.cos(angle),
                    0.5 * s.amplitude * np.sin(angle),
                    rng.uniform(1, 3) * rng.choice([-1, 1]),
                ]
            )
            ramp = np.clip((i - s.onset) / max(1, s.offset - s.onset), 0, 1)
            path += np.outer(0.5 * (1 - np.cos(np.pi * ramp)), step)
            pose += step
        else:  # out of the frame sideways and back
            half = max(1, (s.offset - s.onset) // 3)
            out = np.clip((i - s.onset) / half, 0, 1) - np.clip(
                (i - (s.offset - half)) / half, 0, 1
            )
            path[:, 0] += s.amplitude * 0.5 * (1 - np.cos(np.pi * out))
    return path


def render_events(
    plan: LongVideoPlan, rng: np.random.Generator
) -> tuple[list[Event], dict[int, str]]:
    events, aus = [], {}
    for k, s in enumerate(plan.segments):
        if s.kind in ("micro", "macro"):
            pattern = draw_pattern(s.emotion, rng)
            aus[k] = L.format_aus([pattern.action_units])
        elif s.kind == "blink":
            pattern = BLINK
        elif s.kind == "talk":
            pattern = SYLLABLES[int(s.emotion)]
        else:
            continue
        events.append(Event(pattern, s.onset, s.apex, s.offset, s.amplitude))
    return events, aus


def frame_name(layout: str, plan: LongVideoPlan, number: int) -> str:
    if layout == "samm_lv":
        return f"{plan.video}_{number:04d}.jpg"
    return f"img{number}.jpg"


def _render(
    plan: LongVideoPlan, identity, layout: str, root: Path, camera: Camera
) -> tuple[list[str], dict]:
    rng = np.random.default_rng([plan.seed, 2])
    events, aus = render_events(plan, np.random.default_rng([plan.seed, 3]))
    head = head_path(plan, np.random.default_rng([plan.seed, 4]))
    written = []
    for i, frame in enumerate(iter_frames(identity, events, plan.n_frames, rng, camera, head=head)):
        rel = f"{plan.folder}/{frame_name(layout, plan, i + 1)}"
        _write_bytes(root / rel, _encode(frame, ".jpg"))
        written.append(rel)
    return written, aus


SAMM_LV_PREAMBLE = [
    "SAMM Long Videos Dataset - FACS Codes",
    "",
    "Symbol Key:",
    '"/" = or',
    "",
    "AU Help:",
    '"L2 or R2" = Unilateral AU 2 on left side of face / right side of face',
    '"A2" = Asymmetric AU 2. Occurs on both sides of face but stronger on one side',
    "",
]
SAMM_LV_HEADER = [
    "Subject",
    "Filename",
    "Inducement Code",
    "Onset",
    "Apex",
    "Offset",
    "Duration",
    "Type",
    "Action Units",
    "Notes",
]


def write_samm_lv_coding(rows: list[dict], path: Path, note: str = "") -> None:
    """SAMM_LongVideos_V2_Release.csv: 9 preamble rows, the header, one row per interval
    (Duration = offset - onset + 1, Type Macro / Micro - 1/2, apex -1 = not annotated)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    width = len(SAMM_LV_HEADER)
    for k, text in enumerate(SAMM_LV_PREAMBLE):
        cells = [text] + [""] * (width - 1)
        if k == 6:
            cells[5] = "NOTE: Subjects with Apex Frame not annotated were labelled as -1."
        if k == 1 and note:
            cells[0] = note
        w.writerow(cells)
    w.writerow(SAMM_LV_HEADER)
    for r in rows:
        w.writerow(
            [
                r["subject_code"],
                r["clip"],
                r["inducement"],
                r["onset"],
                r["apex"],
                r["offset"],
                r["offset"] - r["onset"] + 1,
                "Micro - 1/2" if r["type"] == "micro" else "Macro",
                r["aus"],
                "",
            ]
        )
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue().encode("utf-8"))


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
    ids = L.subject_ids("samm" if layout == "samm_lv" else "casme_sq", subjects)
    for s, (subject, code) in enumerate(ids):
        for v in range(videos_per_subject):
            if layout == "casme_sq":
                vcode, stem, _ = L.CASME_SQ_VIDEOS[v % len(L.CASME_SQ_VIDEOS)]
                video = f"{subject}/{subject[1:]}_{vcode}"
                folder = f"rawpic/{video}"
            else:
                video = f"{subject}_{v + 1}"
                folder = f"SAMM_longvideos/{video}"
            plan = plan_video(
                layout,
                subject,
                code,
                s,
                video,
                folder,
                intervals,
                seed,
                spec.emotions,
                face_leaves=face_leaves,
                frame_width=frame_width,
            )
            for k, seg in enumerate(plan.intervals, 1):
                seg.clip = f"{stem}_{k}" if layout == "casme_sq" else f"{video}_{k}"
            plans.append(plan)
    return plans


def generate_long(
    layout: str,
    out: Path,
    *,
    subjects: int = 10,
    videos_per_subject: int = 1,
    intervals: int = 6,
    seed: int = 0,
    faces: Path | None = None,
    progress: bool = True,
    force: bool = False,
    face_leaves: bool = False,
    camera: Camera = Camera(),
    workers: int | None = None,
    frame_size: tuple[int, int] | None = None,
) -> SynthSet:
    """Write synthetic long videos in `layout` (casme_sq | samm_lv) under `out`, with the coding
    file in the real format, synth_truth.csv (the intervals) and synth_nuisances.csv.
    `frame_size` (W, H) overrides the layout's (faces scaled with it; tests render small)."""
    spec = SPECS.get(layout)
    if spec is None:
        raise MicroferError(
            f"long videos are written in the layouts {', '.join(SPECS)}, not {layout!r}"
        )
    out = Path(out)
    size = tuple(frame_size) if frame_size else spec.frame_size
    scale = min(size[0] / spec.frame_size[0], size[1] / spec.frame_size[1])
    plans = plan_long(
        layout,
        subjects=subjects,
        videos_per_subject=videos_per_subject,
        intervals=intervals,
        seed=seed,
        face_leaves=face_leaves,
        frame_width=size[0],
    )
    identities = load_identities(
        subjects,
        faces=faces,
        frame_size=size,
        face_width=(spec.face_width[0] * scale, spec.face_width[1] * scale),
        seed=seed,
    )
    prepare_out(out, force)
    files = [f"{p.folder}/{frame_name(layout, p, i + 1)}" for p in plans for i in range(p.n_frames)]
    files += [spec.coding_name, TRUTH_NAME, NUISANCE_NAME]
    marker = {
        "tool": "microfer synth",
        "layout": layout,
        "long_videos": True,
        "seed": seed,
        "subjects": subjects,
        "videos_per_subject": videos_per_subject,
        "intervals": intervals,
        "face_leaves": face_leaves,
        "frame_size": list(size),
        "fps": spec.fps,
        "coding_file": spec.coding_name,
        "complete": False,
        "files": files,
    }
    write_text(out / MARKER, json.dumps(marker, indent=1) + "\n")
    truth, nuisances, coded, samm_rows = [], [], [], []
    n_workers = max(1, min(workers or os.cpu_count() or 1, 4))
    with (
        _progress(len(plans), f"synth {layout} long videos", progress) as bar,
        ThreadPoolExecutor(n_workers) as pool,
    ):
        jobs = pool.map(
            lambda p: _render(p, identities[p.subject_index], layout, out, camera), plans
        )
        for plan, (_, aus) in zip(plans, jobs):
            bar.update(1)
            identity = identities[plan.subject_index]
            last = plan.n_frames
            for k, s in enumerate(plan.segments):
                onset, apex, offset = (
                    s.onset + 1,
                    s.apex + 1,
                    s.offset + 1,
                )  # frame numbers start at 1
                if s.kind not in ("micro", "macro"):
                    nuisances.append(
                        {
                            "subject": plan.subject,
                            "video": plan.folder,
                            "kind": s.kind,
                            "onset": onset,
                            "offset": offset,
                            "amplitude_px": s.amplitude,
                        }
                    )
                    continue
                truth.append(
                    {
                        "dataset": layout,
                        "subject": plan.subject,
                        "clip": s.clip,
                        "onset": onset,
                        "apex": apex,
                        "offset": offset,
                        "emotion": s.emotion,
                        "class3": L.class3("casme_sq", s.emotion),
                        "amplitude_px": s.amplitude,
                        "identity": identity.name,
                        "seed": plan.seed,
                        "type": s.kind,
                        "coded_apex": apex,
                        "first_frame": 1,
                        "last_frame": last,
                        "frame_dir": plan.folder,
                    }
                )
                coded.append(
                    L.CodedEvent(
                        plan.subject_code,
                        s.clip,
                        onset,
                        apex,
                        offset,
                        s.emotion,
                        aus.get(k, ""),
                        1,
                        last,
                        s.kind,
                        {"video": plan.video},
                    )
                )
                samm_rows.append(
                    {
                        "subject_code": plan.subject_code,
                        "clip": s.clip,
                        "inducement": int(plan.video.rsplit("_", 1)[1])
                        if layout == "samm_lv"
                        else 0,
                        "onset": onset,
                        "apex": apex,
                        "offset": offset,
                        "type": s.kind,
                        "aus": aus.get(k, ""),
                    }
                )
    coding_file = out / spec.coding_name
    if layout == "casme_sq":
        L.write_casme_sq_coding(coded, coding_file)
    else:
        write_samm_lv_coding(
            samm_rows,
            coding_file,
            note=f"SYNTHETIC long videos written by microfer synth (seed {seed}): not SAMM data",
        )
    write_csv(
        out / TRUTH_NAME,
        pd.DataFrame(truth, columns=TRUTH_COLUMNS).sort_values(["subject", "onset"]),
    )
    write_csv(
        out / NUISANCE_NAME,
        pd.DataFrame(
            nuisances, columns=["subject", "video", "kind", "onset", "offset", "amplitude_px"]
        ),
    )
    marker.update(complete=True)
    write_text(out / MARKER, json.dumps(marker, indent=1) + "\n")
    return SynthSet(
        layout=layout,
        root=out,
        coding_file=coding_file,
        truth_file=out / TRUTH_NAME,
        n_clips=len(truth),
    )
