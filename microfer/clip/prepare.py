"""One clip: frames -> aligned onset/apex faces + motion; a dataset: the cached driver.

`prepare_clip` (library API, also used by single-clip prediction):
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
4. the face is verified on the apex frame: a face must be detected where the onset face
   was, and its landmarks must lie near the aligned position (within `APEX_FACE_TOLERANCE`
   eye distances); else ClipError (stage "face") -- never a flow from a face-less crop;
5. optical flow onset -> apex on the aligned grey faces, and its optical strain.

`prepare_dataset` checks the dataset layout first (one report), then prepares every clip
not already in the cache, in parallel processes, saving each clip as it completes; a
killed run resumes where it stopped. Clips that fail are recorded with their reason and
not retried unless asked.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from microfer.clip.apex import DEFAULT_SPOT, SPOT_METHODS, motion_curve, spot_apex
from microfer.clip.motion import DEFAULT_FLOW, FLOW_METHODS
from microfer.errors import ClipError, LayoutError, MicroferError
from microfer.records import ClipFailure, PreparedClip, Sample, is_missing

# Bump when a change in this stage changes what it produces: it is part of the cache key.
PREPARE_VERSION = (
    "prepare-4"  # face checked at the apex (and through a spotted curve); sizes checked
)


@dataclass(frozen=True)
class PrepareSettings:
    size: int = 128  # side of the aligned face crop, px
    flow: str = DEFAULT_FLOW  # "dis" | "tvl1" (see motion.py for the measurements)
    spot_method: str = DEFAULT_SPOT  # "fd" | "diff" | "flow" (see apex.py)
    upsample: int = 0  # dlib detector pyramid levels up (1 finds faces < 80 px)
    detect_max_side: int = 640  # detection runs on a copy at most this large
    motion_curve: str = "spotted"  # "spotted": curve only when the apex is spotted; "always"
    version: str = PREPARE_VERSION

    def __post_init__(self):
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
        if not 32 <= int(self.size) <= 1024:
            raise MicroferError(f"face size {self.size} is outside 32..1024 px")

    def key(self) -> str:
        """Short hash of every setting (the version included): the cache folder name."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


# The apex face's alignment points (eye centres, nose tip, mouth corners), mapped through
# the onset frame's transform, must lie within this many eye-centre distances (mean) of
# where the alignment put the onset's: half an eye distance is a head moved by ~23 px in
# a 128 px crop, far beyond the sub-pixel drift of an ME recording, and still well short
# of a face that left the crop.
APEX_FACE_TOLERANCE = 0.5
# Face presence through a spotted curve: about this many evenly spaced checks (plus a
# bisection at each change), each a detection on the onset face's region downscaled so
# that the face is ~_CHECK_FACE_PX wide.
_PRESENCE_CHECKS = 12
_CHECK_FACE_PX = 100


def _fail(stage: str, message: str) -> ClipError:
    """A ClipError that remembers the stage it comes from (for ClipFailure.stage)."""
    exc = ClipError(message)
    exc.stage = stage
    return exc


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


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _faces_near(image: np.ndarray, box, upsample: int) -> list:
    """Face boxes (full-image coordinates) found in the region around `box` (the onset face,
    half a box side of context each way), downscaled so that the face is about
    _CHECK_FACE_PX wide (a cheap check); best overlap first, only boxes overlapping `box`
    by IoU >= 0.3."""
    from microfer.clip.face import detect_faces

    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1)
    context = side // 2
    rx0, ry0 = max(0, x0 - context), max(0, y0 - context)
    rx1, ry1 = min(w, x1 + context), min(h, y1 + context)
    region = image[ry0:ry1, rx0:rx1]
    if region.size == 0:
        return []
    max_side = max(64, int(round(max(region.shape[:2]) * min(1.0, _CHECK_FACE_PX / side))))
    found = [
        (bx0 + rx0, by0 + ry0, bx1 + rx0, by1 + ry0)
        for bx0, by0, bx1, by1 in detect_faces(region, upsample, max_side)
    ]
    scored = sorted(((_iou(b, box), b) for b in found), key=lambda t: -t[0])
    return [b for score, b in scored if score >= 0.3]


def _face_presence(images: list, numbers: list, box, settings: PrepareSettings) -> list[int]:
    """Frame numbers (of `numbers`, after the onset at index 0) where the onset's face is
    not found: checked every few frames, and bisected between a check that finds it and
    one that does not, so the first / last missing frame is exact."""
    n = len(images)
    if n < 2:
        return []
    cache: dict[int, bool] = {0: True}

    def present(i: int) -> bool:
        if i not in cache:
            cache[i] = bool(_faces_near(images[i], box, settings.upsample))
        return cache[i]

    step = max(1, int(np.ceil((n - 1) / _PRESENCE_CHECKS)))
    checks = sorted(set(range(0, n, step)) | {n - 1})
    missing = np.zeros(n, bool)
    for a, b in zip(checks, checks[1:]):
        pa, pb = present(a), present(b)
        if pa and pb:
            continue
        if not pa and not pb:
            missing[a : b + 1] = True
            continue
        lo, hi = a, b  # present(lo) != present(hi): find where it changes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if present(mid) == pa:
                lo = mid
            else:
                hi = mid
        if pa:
            missing[hi : b + 1] = True
        else:
            missing[a : lo + 1] = True
    return [numbers[i] for i in np.flatnonzero(missing) if i > 0]


def _check_apex_face(
    where: str,
    image: np.ndarray,
    apex_number: int,
    onset_box,
    M: np.ndarray,
    settings: PrepareSettings,
) -> None:
    """ClipError (stage "face") unless the onset's face is at the apex frame, near where
    the onset frame's alignment puts it."""
    from microfer.clip.face import (
        alignment_points,
        canonical_points,
        fit_landmarks,
        transform_points,
    )

    # the cheap detection: its box is only where the landmarks start, and what is judged is
    # where they end up (46 synthetic frames: box up to 21 px off, the distance below within
    # 0.006 eye distances of a full-size detection's, 6 ms instead of 36)
    boxes = _faces_near(image, onset_box, settings.upsample)
    if not boxes:
        raise _fail(
            "face",
            f"{where}: no face found in the apex frame {apex_number} where the onset frame "
            f"has one (the face left the frame, or the clip cuts away)",
        )
    # Where the landmarks sit is what counts, not whether they clear the border as the
    # onset's must: a tight crop whose onset eye just clears the edge may not, 1 px on.
    points = fit_landmarks(image, boxes[0])
    canon = canonical_points(settings.size)
    eye = float(np.hypot(*(canon[1] - canon[0])))
    moved = float(np.hypot(*(transform_points(alignment_points(points), M) - canon).T).mean()) / eye
    if moved > APEX_FACE_TOLERANCE:
        raise _fail(
            "face",
            f"{where}: the face in the apex frame {apex_number} is {moved:.2f} eye distances "
            f"away from where the onset frame aligned it (at most {APEX_FACE_TOLERANCE}); "
            "the head moved too far for one alignment",
        )


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
) -> PreparedClip:
    """Prepare one clip; see the module docstring. Raises ClipError with the reason.

    `frames`: a video.FrameSource, or a sequence of BGR uint8 arrays whose frame numbers
    are `frame_numbers` (default 0..n-1). `timings`, when given, accumulates ms per stage
    (decode, detect, landmarks, warp, spot, flow). `strict_apex`: the apex is the
    caller's own choice, used as given or refused (ClipError naming the frames); without
    it an unusable (dataset-annotated) apex is replaced by a spotted one, with a note.
    `memo`: a dict shared by several calls on the SAME frames and settings (e.g. predict's
    scan of a whole clip, then its spotted interval): frames decoded and onset faces found
    (detection + landmarks, hence the alignment) by one call are reused by the next instead
    of being computed again; the results are the same as without it.
    """
    from microfer.clip.face import (
        alignment_transform,
        detect_faces,
        fit_landmarks,
        landmark_problem,
        warp_face,
    )
    from microfer.clip.motion import optical_flow, optical_strain
    from microfer.clip.video import ArraySource, frame_ranges

    source = (
        frames
        if hasattr(frames, "read") and hasattr(frames, "numbers")
        else ArraySource(list(frames), list(frame_numbers or []))
    )
    where = str(getattr(source, "path", "clip"))
    onset, offset = int(onset), int(offset)
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

    notes: list[str] = []
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
    want_curve = not apex_ok or settings.motion_curve == "always"
    numbers = available if want_curve else [onset, int(apex)]

    timer = _Timer(timings)
    decoded = memo.setdefault("frames", {}) if memo is not None else {}
    todo = [n for n in numbers if n not in decoded]
    if todo:
        decoded.update(zip(todo, source.read(todo)))
    images = [decoded[n] for n in numbers]
    timer.lap("decode")
    onset_image = images[0]
    for number, image in zip(numbers, images):
        if image.shape[:2] != onset_image.shape[:2]:
            file = getattr(source, "files", {}).get(number)
            raise _fail(
                "frames",
                f"{where}: frame {number}{f' ({file.name})' if file else ''} is "
                f"{image.shape[1]}x{image.shape[0]} px but the onset frame {onset} is "
                f"{onset_image.shape[1]}x{onset_image.shape[0]} px; the frame size changes "
                "inside the clip, so one face crop cannot fit both",
            )
    from microfer.records import FaceLandmarks

    found = memo.setdefault("onset_faces", {}) if memo is not None else {}
    face = found.get(onset)
    if face is None:
        boxes = detect_faces(onset_image, settings.upsample, settings.detect_max_side)
        timer.lap("detect")
        if not boxes:
            raise _fail("face", f"{where}: no face found in the onset frame {onset}")
        face = FaceLandmarks(
            box=boxes[0], points=fit_landmarks(onset_image, boxes[0]), n_faces=len(boxes)
        )
        found[onset] = face
    if face.n_faces > 1:
        notes.append(f"{face.n_faces} faces in the onset frame: kept the largest")
    timer.lap("landmarks")
    problem = landmark_problem(face, onset_image.shape)
    if problem:
        raise _fail("face", f"{where}: onset frame {onset}: {problem}")
    M = alignment_transform(face.points, settings.size)
    faces = [warp_face(im, M, settings.size) for im in images]
    timer.lap("warp")

    curve = np.zeros(0, np.float32)
    no_face: list[int] = []
    if not apex_ok:  # spotting: frames without the face take no part in it
        no_face = _face_presence(images, numbers, face.box, settings)
        timer.lap("detect")
        if len(no_face) == len(numbers) - 1:
            raise _fail(
                "face",
                f"{where}: no face found in frames {frame_ranges(no_face)} after the onset "
                f"frame {onset}; nothing to spot an apex in",
            )
    if want_curve:
        left_out = set(no_face)
        keep = [i for i, n in enumerate(numbers) if n not in left_out]
        curve = np.zeros(len(numbers), np.float32)
        curve[keep] = motion_curve([faces[i] for i in keep], settings.spot_method, reference=0)
    if apex_ok:
        apex_number, source_name = int(apex), "annotated"
    else:
        sub = curve[keep]
        apex_number, source_name = numbers[keep[spot_apex(sub)]], "spotted"
    timer.lap("spot")
    if want_curve and len(available) < offset - onset + 1:
        notes.append(f"{offset - onset + 1 - len(available)} frame(s) missing in {onset}..{offset}")
    if no_face:
        notes.append(f"no face in frame(s) {frame_ranges(no_face)}: left out of apex spotting")

    apex_index = numbers.index(apex_number)
    _check_apex_face(where, images[apex_index], apex_number, face.box, M, settings)
    timer.lap("detect")
    apex_face = faces[apex_index]
    flow = optical_flow(faces[0], apex_face, settings.flow)
    strain = optical_strain(flow)
    timer.lap("flow")
    return PreparedClip(
        onset=onset,
        apex=apex_number,
        offset=offset,
        apex_source=source_name,
        onset_face=faces[0],
        apex_face=apex_face,
        flow=flow,
        strain=strain,
        landmarks=face.points.astype(np.float32),
        transform=M.astype(np.float32),
        face_box=tuple(int(v) for v in face.box),
        motion_curve=curve,
        notes="; ".join(notes),
        no_face_frames=tuple(int(n) for n in no_face),
    )


# --- dataset layout check ---------------------------------------------------------------


def _missing_hint(location: Path) -> str:
    """Why a clip path is missing: the deepest existing folder, and near-miss names there."""
    parent = location.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    missing_part = location.relative_to(parent).parts[0]
    try:
        names = [p.name for p in parent.iterdir()]
    except OSError:
        names = []
    lower = {n.lower(): n for n in names}
    want = missing_part.lower()
    # Only names that contain the wanted one (or it them) count as "renamed": sub02 is
    # close to sub01 by edit distance but is another subject, not a rename.
    close = (
        [lower[want]]
        if want in lower
        else [
            n
            for n in difflib.get_close_matches(missing_part, names, n=3, cutoff=0.6)
            if want in n.lower() or n.lower() in want
        ]
    )
    hint = f"; did you mean {', '.join(repr(c) for c in close)} (renamed?)" if close else ""
    return f"'{missing_part}' not found in {parent}{hint}"


def check_layout(samples: Sequence[Sample], root: Path) -> list[ClipFailure]:
    """Problems with the on-disk layout, one per clip: missing/renamed/empty folder, frame
    numbers not covering onset..offset, unreadable video. Cheap: lists folders only."""
    from microfer.clip.video import frame_ranges, list_sequences, open_frames, sample_location

    root = Path(root)
    problems: list[ClipFailure] = []
    if not root.is_dir():
        return [
            ClipFailure(s.key, "layout", f"dataset root {root} does not exist") for s in samples
        ]
    listings: dict[Path, dict] = {}
    videos: dict[Path, list[int]] = {}
    for s in samples:
        try:
            location, prefix = sample_location(root, s)
        except LayoutError as exc:
            problems.append(ClipFailure(s.key, "layout", str(exc)))
            continue
        if not location.exists():
            problems.append(
                ClipFailure(s.key, "layout", f"{location} is missing: {_missing_hint(location)}")
            )
            continue
        if location.is_dir():
            if location not in listings:
                listings[location] = list_sequences(location)
            groups = listings[location]
            if not groups:
                problems.append(
                    ClipFailure(s.key, "layout", f"{location} is empty (no numbered frames)")
                )
                continue
            if prefix is None:
                if len(groups) != 1:
                    problems.append(
                        ClipFailure(
                            s.key,
                            "layout",
                            f"{location} holds several sequences "
                            f"({', '.join(repr(p) for p in sorted(groups))})",
                        )
                    )
                    continue
                prefix = next(iter(groups))
            if prefix not in groups:
                problems.append(
                    ClipFailure(
                        s.key,
                        "layout",
                        f"{location} has no frames named '{prefix}<n>' "
                        f"(found {', '.join(repr(p + '<n>') for p in sorted(groups))})",
                    )
                )
                continue
            have = groups[prefix]
        else:
            if location not in videos:
                try:
                    videos[location] = open_frames(location).numbers
                except MicroferError as exc:
                    problems.append(ClipFailure(s.key, "layout", str(exc)))
                    continue
            have = videos[location]
        have = set(have)
        missing = [n for n in range(s.onset, s.offset + 1) if n not in have]
        if missing:
            lo, hi = min(have), max(have)
            problems.append(
                ClipFailure(
                    s.key,
                    "layout",
                    f"{location}: frames {frame_ranges(missing)} of "
                    f"{s.onset}..{s.offset} missing (folder has {len(have)} frames, {lo}..{hi})",
                )
            )
    return problems


def layout_report(problems: Sequence[ClipFailure], n_samples: int) -> str:
    lines = [f"layout check: {len(problems)} of {n_samples} clips cannot be prepared"]
    lines += [f"  {p.key}: {p.reason}" for p in problems]
    return "\n".join(lines) + "\n"


def samples_of(samples) -> tuple[list[Sample], list[ClipFailure]]:
    """Samples of a manifest table (or a list of Samples), and the rows that cannot be
    prepared because they have no onset/offset (as layout failures)."""
    if isinstance(samples, (list, tuple)) and all(isinstance(s, Sample) for s in samples):
        return list(samples), []
    import pandas as pd

    out, unbounded = [], []
    for rec in pd.DataFrame(samples).to_dict("records"):
        if is_missing(rec["onset"]) or is_missing(rec["offset"]):
            key = f"{rec['dataset']}/{rec['subject']}/{rec['clip']}"
            unbounded.append(ClipFailure(key, "layout", "no onset/offset in the manifest"))
            continue
        out.append(Sample.from_row(rec))
    return out, unbounded


# --- dataset driver ---------------------------------------------------------------------


@dataclass
class PrepareSummary:
    settings_key: str
    cache_dir: Path
    total: int = 0
    prepared: int = 0  # done in this run
    skipped: int = 0  # already in the cache (ok, or failed earlier)
    failed: list[ClipFailure] = field(default_factory=list)  # failed in this run
    layout: list[ClipFailure] = field(default_factory=list)  # skipped by the layout check
    earlier_failures: int = 0  # failed in an earlier run, not retried
    spotted: int = 0  # apexes spotted in this run
    seconds: float = 0.0
    clips_per_s_steady: float = 0.0  # prepared / time after the first clip completed
    layout_report_path: Path | None = None

    def text(self) -> str:
        lines = [
            f"prepare: {self.total} clips -> {self.cache_dir}",
            f"  prepared now: {self.prepared} (apex spotted: {self.spotted}) in {self.seconds:.1f} s",
            f"  already cached: {self.skipped}"
            + (
                f" (of which {self.earlier_failures} failed earlier; --retry-failed retries them)"
                if self.earlier_failures
                else ""
            ),
            f"  failed now: {len(self.failed)}",
        ]
        lines += [f"    {f.key} [{f.stage}]: {f.reason}" for f in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"    ... {len(self.failed) - 20} more in {self.cache_dir / 'index.csv'}")
        if self.layout:
            lines.append(
                f"  skipped by the layout check: {len(self.layout)} (see {self.layout_report_path})"
            )
        return "\n".join(lines)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would fight them


def _prepare_sample(sample: Sample, root: Path, settings: PrepareSettings):
    """Worker: one sample -> (key, PreparedClip | ClipFailure). Never raises a MicroferError."""
    from microfer.clip.video import frames_for_sample

    try:
        source = frames_for_sample(root, sample)
        return sample.key, prepare_clip(source, sample.onset, sample.apex, sample.offset, settings)
    except MicroferError as exc:
        return sample.key, ClipFailure(sample.key, getattr(exc, "stage", "frames"), str(exc))
    except Exception as exc:  # a library choking on a frame must not stop the dataset run
        return sample.key, ClipFailure(sample.key, "motion", f"{type(exc).__name__}: {exc}")


def _prepare_on_worker(sample: Sample, root: Path, settings: PrepareSettings):
    """_prepare_sample on a dask worker (one thread per worker process, like the local pool)."""
    _init_worker()
    return _prepare_sample(sample, root, settings)


def prepare_dataset(
    samples,
    root: Path,
    out: Path,
    settings: PrepareSettings = PrepareSettings(),
    workers: int = 1,
    strict: bool = False,
    progress: bool = True,
    retry_failed: bool = False,
    scheduler: str | None = None,
) -> PrepareSummary:
    """Prepare every sample of a manifest into the cache at `out` (see module docstring).

    `scheduler`: "local" or a dask scheduler address (microfer.parallel) to prepare the
    clips on a dask.distributed cluster instead of `workers` local processes; its workers
    must see `root` at the same path. Results are saved here, as each clip completes."""
    from microfer.clip.cache import Cache

    root, out = Path(root), Path(out)
    t_start = time.perf_counter()
    sample_list, unbounded = samples_of(samples)
    from collections import Counter

    dupes = [k for k, n in Counter(s.key for s in sample_list).items() if n > 1]
    if dupes:
        raise MicroferError(
            f"the manifest lists {len(dupes)} clip(s) more than once: {', '.join(dupes[:5])}"
        )

    cache = Cache.for_settings(out, settings)
    summary = PrepareSummary(settings.key(), cache.dir, total=len(sample_list) + len(unbounded))

    problems = check_layout(sample_list, root)
    if problems or unbounded:
        report = layout_report(unbounded + problems, summary.total)
        from microfer.io import write_text

        summary.layout_report_path = out / "layout_report.txt"
        if not (
            summary.layout_report_path.is_file()
            and summary.layout_report_path.read_text(encoding="utf-8") == report
        ):
            write_text(
                summary.layout_report_path, report
            )  # a rerun on a finished cache writes nothing
        head = "\n".join(report.splitlines()[:11])
        if strict:
            raise LayoutError(
                f"{head}\nfull report: {summary.layout_report_path} "
                "(without --strict these clips are skipped)"
            )
        print(
            f"{head}\nfull report: {summary.layout_report_path}; these clips are skipped",
            file=sys.stderr,
        )
    summary.layout = unbounded + problems
    bad = {p.key for p in summary.layout}

    cache.sync_index()  # a killed run may have left entries the index does not list
    todo = []
    for s in sample_list:
        if s.key in bad:
            continue
        if cache.has(s):
            summary.skipped += 1
        elif cache.has_failed(s) and not retry_failed:
            summary.skipped += 1
            summary.earlier_failures += 1
        else:
            todo.append(s)

    from tqdm import tqdm

    bar = tqdm(
        total=len(todo), desc="prepare", unit="clip", disable=not progress or None, file=sys.stderr
    )
    first_done = None
    last_flush = time.perf_counter()

    def handle(result) -> None:
        nonlocal first_done, last_flush
        key, value = result
        sample = by_key[key]
        if isinstance(value, ClipFailure):
            cache.record_failure(sample, value.stage, value.reason)
            summary.failed.append(value)
        else:
            cache.save(sample, value)
            summary.prepared += 1
            summary.spotted += value.apex_source == "spotted"
        bar.update(1)
        if first_done is None:
            first_done = time.perf_counter()
        if time.perf_counter() - last_flush > 5:
            cache.flush_index()
            last_flush = time.perf_counter()

    by_key = {s.key: s for s in todo}
    if todo:
        from microfer.clip.face import landmark_model_path
        from microfer.clip.landmarks import load as load_landmark_model

        # converts dlib's landmark file on the first run ever, here once, not in every worker
        load_landmark_model(landmark_model_path())
    try:
        if scheduler and todo:
            from microfer.parallel import scheduler_context

            with scheduler_context(scheduler) as client:
                from distributed import as_completed as dask_completed

                futures = client.map(
                    _prepare_on_worker, todo, root=root, settings=settings, pure=False
                )
                try:
                    for fut in dask_completed(futures):
                        handle(fut.result())
                except BaseException:
                    client.cancel(futures)
                    raise
        elif workers <= 1 or len(todo) <= 1:
            _init_worker()
            for s in todo:
                handle(_prepare_sample(s, root, settings))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn, not fork: forking a process that has run OpenCV/dlib threads can hang.
            ctx = multiprocessing.get_context("spawn")
            from concurrent.futures.process import BrokenProcessPool

            done: set[str] = set()
            try:
                with ProcessPoolExecutor(
                    max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_init_worker
                ) as pool:
                    futures = [pool.submit(_prepare_sample, s, root, settings) for s in todo]
                    try:
                        for fut in as_completed(futures):
                            result = fut.result()
                            handle(result)
                            done.add(result[0])
                    except BaseException:
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
            except BrokenProcessPool:
                # Worker processes re-import the caller's __main__ (spawn); from stdin or an
                # unguarded script that fails. Finish in this process rather than give up.
                print(
                    "prepare: worker processes could not run (guard a calling script with "
                    "`if __name__ == '__main__':`); continuing in one process",
                    file=sys.stderr,
                )
                _init_worker()
                for s in todo:
                    if s.key not in done:
                        handle(_prepare_sample(s, root, settings))
    finally:
        bar.close()
        cache.flush_index()
        summary.seconds = time.perf_counter() - t_start
        if first_done is not None and summary.prepared + len(summary.failed) > 1:
            summary.clips_per_s_steady = (summary.prepared + len(summary.failed) - 1) / max(
                1e-9, time.perf_counter() - first_done
            )
    return summary
