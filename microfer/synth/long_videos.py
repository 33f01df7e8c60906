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

The plans are made in `long_plans` (its names are imported here too); this module renders
them and writes the files.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from microfer.errors import MicroferError
from microfer.io import write_csv
from microfer.synth import layouts as L
from microfer.synth.coding_files import (  # noqa: F401  (re-exported: the writer lived here)
    SAMM_LV_HEADER,
    SAMM_LV_PREAMBLE,
    write_samm_lv_coding,
)
from microfer.synth.faces import Identity, load_identities
from microfer.synth.generate import SynthSet
from microfer.synth.long_plans import (  # noqa: F401  (re-exported: the planning lived here)
    BLINK,
    SPECS,
    SYLLABLES,
    LongSpec,
    LongVideoPlan,
    Segment,
    add_talk,
    make_segment,
    plan_long,
    plan_video,
    random_duration,
    segment_order,
)
from microfer.synth.motion import Camera, Event, Pattern, draw_pattern, iter_frames  # noqa: F401
from microfer.synth.output import (
    MARKER,  # noqa: F401  (re-exported)
    encode_image,
    prepare_out,
    progress_bar,
    write_bytes_atomic,
    write_marker,
)
from microfer.synth.planning import AMPLITUDES, derived_seed  # noqa: F401  (re-exported)
from microfer.synth.truth import TRUTH_COLUMNS, TRUTH_NAME

NUISANCE_NAME = "synth_nuisances.csv"
LONG_LAYOUTS = ("casme_sq", "samm_lv")


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
        write_bytes_atomic(root / rel, encode_image(frame, ".jpg"))
        written.append(rel)
    return written, aus


def _numbers(s: Segment) -> tuple[int, int, int]:
    """Onset, apex and offset as frame numbers (they start at 1 in both layouts)."""
    return s.onset + 1, s.apex + 1, s.offset + 1


def _nuisance_row(plan: LongVideoPlan, s: Segment) -> dict:
    onset, _, offset = _numbers(s)
    return {
        "subject": plan.subject,
        "video": plan.folder,
        "kind": s.kind,
        "onset": onset,
        "offset": offset,
        "amplitude_px": s.amplitude,
    }


def _truth_row(plan: LongVideoPlan, s: Segment, identity: str, layout: str) -> dict:
    onset, apex, offset = _numbers(s)
    return {
        "dataset": layout,
        "subject": plan.subject,
        "clip": s.clip,
        "onset": onset,
        "apex": apex,
        "offset": offset,
        "emotion": s.emotion,
        "class3": L.class3("casme_sq", s.emotion),
        "amplitude_px": s.amplitude,
        "identity": identity,
        "seed": plan.seed,
        "type": s.kind,
        "coded_apex": apex,
        "first_frame": 1,
        "last_frame": plan.n_frames,
        "frame_dir": plan.folder,
    }


def _coded_event(plan: LongVideoPlan, s: Segment, aus: str) -> L.CodedEvent:
    onset, apex, offset = _numbers(s)
    return L.CodedEvent(
        plan.subject_code,
        s.clip,
        onset,
        apex,
        offset,
        s.emotion,
        aus,
        1,
        plan.n_frames,
        s.kind,
        {"video": plan.video},
    )


def _samm_row(plan: LongVideoPlan, s: Segment, aus: str, layout: str) -> dict:
    onset, apex, offset = _numbers(s)
    return {
        "subject_code": plan.subject_code,
        "clip": s.clip,
        "inducement": int(plan.video.rsplit("_", 1)[1]) if layout == "samm_lv" else 0,
        "onset": onset,
        "apex": apex,
        "offset": offset,
        "type": s.kind,
        "aus": aus,
    }


@dataclass
class LongRows:
    """The table rows of the rendered videos, in video order (`identity`: the face, as
    synth_truth.csv names it)."""

    truth: list[dict] = field(default_factory=list)  # synth_truth.csv, one per interval
    nuisances: list[dict] = field(default_factory=list)  # synth_nuisances.csv
    coded: list[L.CodedEvent] = field(default_factory=list)  # casme_sq coding file
    samm: list[dict] = field(default_factory=list)  # samm_lv coding file

    def add_video(self, plan: LongVideoPlan, aus: dict, identity: str, layout: str) -> None:
        for k, s in enumerate(plan.segments):
            if s.kind not in ("micro", "macro"):
                self.nuisances.append(_nuisance_row(plan, s))
                continue
            self.truth.append(_truth_row(plan, s, identity, layout))
            self.coded.append(_coded_event(plan, s, aus.get(k, "")))
            self.samm.append(_samm_row(plan, s, aus.get(k, ""), layout))

    def write(self, out: Path, layout: str, coding_file: Path, seed: int) -> None:
        """The coding file, synth_truth.csv and synth_nuisances.csv."""
        if layout == "casme_sq":
            L.write_casme_sq_coding(self.coded, coding_file)
        else:
            write_samm_lv_coding(
                self.samm,
                coding_file,
                note=f"SYNTHETIC long videos written by microfer synth (seed {seed}): not SAMM data",
            )
        write_csv(
            out / TRUTH_NAME,
            pd.DataFrame(self.truth, columns=TRUTH_COLUMNS).sort_values(["subject", "onset"]),
        )
        write_csv(
            out / NUISANCE_NAME,
            pd.DataFrame(
                self.nuisances,
                columns=["subject", "video", "kind", "onset", "offset", "amplitude_px"],
            ),
        )


def _render_long(
    plans: list[LongVideoPlan],
    identities: list[Identity],
    layout: str,
    out: Path,
    camera: Camera,
    workers: int | None,
    progress: bool,
) -> LongRows:
    """Render every video (in threads, as `generate`) and collect its rows."""
    rows = LongRows()
    n_workers = max(1, min(workers or os.cpu_count() or 1, 4))
    with (
        progress_bar(len(plans), f"synth {layout} long videos", progress) as bar,
        ThreadPoolExecutor(n_workers) as pool,
    ):
        jobs = pool.map(
            lambda p: _render(p, identities[p.subject_index], layout, out, camera), plans
        )
        for plan, (_, aus) in zip(plans, jobs):
            bar.update(1)
            rows.add_video(plan, aus, identities[plan.subject_index].name, layout)
    return rows


def _long_marker(
    layout: str,
    spec: LongSpec,
    plans: list[LongVideoPlan],
    size: tuple[int, ...],
    *,
    seed: int,
    subjects: int,
    videos_per_subject: int,
    intervals: int,
    face_leaves: bool,
) -> dict:
    files = [f"{p.folder}/{frame_name(layout, p, i + 1)}" for p in plans for i in range(p.n_frames)]
    files += [spec.coding_name, TRUTH_NAME, NUISANCE_NAME]
    return {
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
    plans = plan_long(
        layout,
        subjects=subjects,
        videos_per_subject=videos_per_subject,
        intervals=intervals,
        seed=seed,
        face_leaves=face_leaves,
        frame_width=size[0],
    )
    scale = min(size[0] / spec.frame_size[0], size[1] / spec.frame_size[1])
    face_width = (spec.face_width[0] * scale, spec.face_width[1] * scale)
    identities = load_identities(
        subjects, faces=faces, frame_size=size, face_width=face_width, seed=seed
    )
    prepare_out(out, force)
    marker = _long_marker(
        layout,
        spec,
        plans,
        size,
        seed=seed,
        subjects=subjects,
        videos_per_subject=videos_per_subject,
        intervals=intervals,
        face_leaves=face_leaves,
    )
    write_marker(out, marker)
    rows = _render_long(plans, identities, layout, out, camera, workers, progress)
    coding_file = out / spec.coding_name
    rows.write(out, layout, coding_file, seed)
    marker.update(complete=True)
    write_marker(out, marker)
    return SynthSet(layout, out, coding_file, out / TRUTH_NAME, len(rows.truth))
