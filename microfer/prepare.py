"""One clip: frames -> aligned onset/apex faces + motion; a dataset: the cached driver.

`prepare_clip` (library API, also used by single-clip prediction):
1. read the onset frame (and the apex frame, or every frame onset..offset when the apex
   has to be spotted);
2. detect the face and fit 68 landmarks on the ONSET frame only, and fit ONE similarity
   transform (face.alignment_transform) that is applied to every frame of the clip, so
   per-frame landmark jitter never shows up as motion;
3. use the annotated apex when it is a frame inside (onset, offset], else spot it
   (apex.spot_apex on the motion-vs-onset curve) and say so (apex_source = "spotted");
4. optical flow onset -> apex on the aligned grey faces, and its optical strain.

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
import pandas as pd

from microfer.apex import DEFAULT_SPOT, SPOT_METHODS, motion_curve, spot_apex
from microfer.errors import ClipError, LayoutError, MicroferError
from microfer.motion import DEFAULT_FLOW, FLOW_METHODS
from microfer.records import ClipFailure, PreparedClip, Sample, is_missing

# Bump when a change in this stage changes what it produces: it is part of the cache key.
PREPARE_VERSION = "prepare-3"  # tight crops align (landmark-judged border cut)


@dataclass(frozen=True)
class PrepareSettings:
    size: int = 128                  # side of the aligned face crop, px
    flow: str = DEFAULT_FLOW         # "dis" | "tvl1" (see motion.py for the measurements)
    spot_method: str = DEFAULT_SPOT  # "fd" | "diff" | "flow" (see apex.py)
    upsample: int = 0                # dlib detector pyramid levels up (1 finds faces < 80 px)
    detect_max_side: int = 640       # detection runs on a copy at most this large
    motion_curve: str = "spotted"    # "spotted": curve only when the apex is spotted; "always"
    version: str = PREPARE_VERSION

    def __post_init__(self):
        if self.flow not in FLOW_METHODS:
            raise MicroferError(f"unknown flow method '{self.flow}'; expected one of {', '.join(FLOW_METHODS)}")
        if self.spot_method not in SPOT_METHODS:
            raise MicroferError(f"unknown spotting method '{self.spot_method}'; expected {', '.join(SPOT_METHODS)}")
        if self.motion_curve not in ("spotted", "always"):
            raise MicroferError(f"motion_curve must be 'spotted' or 'always', not '{self.motion_curve}'")
        if not 32 <= int(self.size) <= 1024:
            raise MicroferError(f"face size {self.size} is outside 32..1024 px")

    def key(self) -> str:
        """Short hash of every setting (the version included): the cache folder name."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


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


def prepare_clip(frames, onset: int, apex: int | None, offset: int, settings: PrepareSettings = PrepareSettings(),
                 frame_numbers: Sequence[int] | None = None, *, timings: dict | None = None) -> PreparedClip:
    """Prepare one clip; see the module docstring. Raises ClipError with the reason.

    `frames`: a video.FrameSource, or a sequence of BGR uint8 arrays whose frame numbers
    are `frame_numbers` (default 0..n-1). `timings`, when given, accumulates ms per stage
    (decode, detect, landmarks, warp, spot, flow).
    """
    from microfer.face import alignment_transform, detect_faces, fit_landmarks, landmark_problem, warp_face
    from microfer.motion import optical_flow, optical_strain
    from microfer.video import ArraySource

    source = frames if hasattr(frames, "read") and hasattr(frames, "numbers") else \
        ArraySource(list(frames), list(frame_numbers or []))
    where = str(getattr(source, "path", "clip"))
    onset, offset = int(onset), int(offset)
    if offset <= onset:
        raise _fail("frames", f"{where}: offset {offset} is not after onset {onset} (too few frames)")
    available = [n for n in source.numbers if onset <= n <= offset]
    if onset not in available:
        raise _fail("frames", f"{where}: onset frame {onset} is not available")
    if len(available) < 2:
        raise _fail("frames", f"{where}: only {len(available)} frame(s) in {onset}..{offset}; need at least 2")

    notes: list[str] = []
    apex_ok = apex is not None and onset < int(apex) <= offset and int(apex) in available
    if apex is not None and not apex_ok:
        why = ("equals the onset" if int(apex) == onset else
               "is outside onset..offset" if not onset <= int(apex) <= offset else "is not an available frame")
        notes.append(f"annotated apex {apex} {why}: spotted instead")
    want_curve = not apex_ok or settings.motion_curve == "always"
    numbers = available if want_curve else [onset, int(apex)]

    timer = _Timer(timings)
    images = source.read(numbers)
    timer.lap("decode")
    onset_image = images[0]
    boxes = detect_faces(onset_image, settings.upsample, settings.detect_max_side)
    timer.lap("detect")
    if not boxes:
        raise _fail("face", f"{where}: no face found in the onset frame {onset}")
    if len(boxes) > 1:
        notes.append(f"{len(boxes)} faces in the onset frame: kept the largest")
    from microfer.records import FaceLandmarks

    face = FaceLandmarks(box=boxes[0], points=fit_landmarks(onset_image, boxes[0]), n_faces=len(boxes))
    timer.lap("landmarks")
    problem = landmark_problem(face, onset_image.shape)
    if problem:
        raise _fail("face", f"{where}: onset frame {onset}: {problem}")
    M = alignment_transform(face.points, settings.size)
    faces = [warp_face(im, M, settings.size) for im in images]
    timer.lap("warp")

    curve = np.zeros(0, np.float32)
    if want_curve:
        curve = motion_curve(faces, settings.spot_method, reference=0)
    if apex_ok:
        apex_number, source_name = int(apex), "annotated"
    else:
        apex_number, source_name = numbers[spot_apex(curve)], "spotted"
    timer.lap("spot")
    if want_curve and len(available) < offset - onset + 1:
        notes.append(f"{offset - onset + 1 - len(available)} frame(s) missing in {onset}..{offset}")

    apex_face = faces[numbers.index(apex_number)]
    flow = optical_flow(faces[0], apex_face, settings.flow)
    strain = optical_strain(flow)
    timer.lap("flow")
    return PreparedClip(onset=onset, apex=apex_number, offset=offset, apex_source=source_name,
                        onset_face=faces[0], apex_face=apex_face, flow=flow, strain=strain,
                        landmarks=face.points.astype(np.float32), transform=M.astype(np.float32),
                        face_box=tuple(int(v) for v in face.box), motion_curve=curve, notes="; ".join(notes))


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
    close = [lower[want]] if want in lower else \
        [n for n in difflib.get_close_matches(missing_part, names, n=3, cutoff=0.6)
         if want in n.lower() or n.lower() in want]
    hint = f"; did you mean {', '.join(repr(c) for c in close)} (renamed?)" if close else ""
    return f"'{missing_part}' not found in {parent}{hint}"


def check_layout(samples: Sequence[Sample], root: Path) -> list[ClipFailure]:
    """Problems with the on-disk layout, one per clip: missing/renamed/empty folder, frame
    numbers not covering onset..offset, unreadable video. Cheap: lists folders only."""
    from microfer.video import _ranges, list_sequences, open_frames, sample_location

    root = Path(root)
    problems: list[ClipFailure] = []
    if not root.is_dir():
        return [ClipFailure(s.key, "layout", f"dataset root {root} does not exist") for s in samples]
    listings: dict[Path, dict] = {}
    videos: dict[Path, list[int]] = {}
    for s in samples:
        try:
            location, prefix = sample_location(root, s)
        except LayoutError as exc:
            problems.append(ClipFailure(s.key, "layout", str(exc)))
            continue
        if not location.exists():
            problems.append(ClipFailure(s.key, "layout", f"{location} is missing: {_missing_hint(location)}"))
            continue
        if location.is_dir():
            if location not in listings:
                listings[location] = list_sequences(location)
            groups = listings[location]
            if not groups:
                problems.append(ClipFailure(s.key, "layout", f"{location} is empty (no numbered frames)"))
                continue
            if prefix is None:
                if len(groups) != 1:
                    problems.append(ClipFailure(s.key, "layout", f"{location} holds several sequences "
                                                f"({', '.join(repr(p) for p in sorted(groups))})"))
                    continue
                prefix = next(iter(groups))
            if prefix not in groups:
                problems.append(ClipFailure(s.key, "layout", f"{location} has no frames named '{prefix}<n>' "
                                            f"(found {', '.join(repr(p + '<n>') for p in sorted(groups))})"))
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
            problems.append(ClipFailure(s.key, "layout", f"{location}: frames {_ranges(missing)} of "
                                        f"{s.onset}..{s.offset} missing (folder has {len(have)} frames, {lo}..{hi})"))
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
    prepared: int = 0                      # done in this run
    skipped: int = 0                       # already in the cache (ok, or failed earlier)
    failed: list[ClipFailure] = field(default_factory=list)          # failed in this run
    layout: list[ClipFailure] = field(default_factory=list)          # skipped by the layout check
    earlier_failures: int = 0              # failed in an earlier run, not retried
    spotted: int = 0                       # apexes spotted in this run
    seconds: float = 0.0
    clips_per_s_steady: float = 0.0        # prepared / time after the first clip completed
    layout_report_path: Path | None = None

    def text(self) -> str:
        lines = [f"prepare: {self.total} clips -> {self.cache_dir}",
                 f"  prepared now: {self.prepared} (apex spotted: {self.spotted}) in {self.seconds:.1f} s",
                 f"  already cached: {self.skipped}"
                 + (f" (of which {self.earlier_failures} failed earlier; --retry-failed retries them)"
                    if self.earlier_failures else ""),
                 f"  failed now: {len(self.failed)}"]
        lines += [f"    {f.key} [{f.stage}]: {f.reason}" for f in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"    ... {len(self.failed) - 20} more in {self.cache_dir / 'index.csv'}")
        if self.layout:
            lines.append(f"  skipped by the layout check: {len(self.layout)} (see {self.layout_report_path})")
        return "\n".join(lines)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would fight them


def _prepare_sample(sample: Sample, root: Path, settings: PrepareSettings):
    """Worker: one sample -> (key, PreparedClip | ClipFailure). Never raises a MicroferError."""
    from microfer.video import frames_for_sample

    try:
        source = frames_for_sample(root, sample)
        return sample.key, prepare_clip(source, sample.onset, sample.apex, sample.offset, settings)
    except MicroferError as exc:
        return sample.key, ClipFailure(sample.key, getattr(exc, "stage", "frames"), str(exc))
    except Exception as exc:  # a library choking on a frame must not stop the dataset run
        return sample.key, ClipFailure(sample.key, "motion", f"{type(exc).__name__}: {exc}")


def prepare_dataset(samples: pd.DataFrame, root: Path, out: Path, settings: PrepareSettings = PrepareSettings(),
                    workers: int = 1, strict: bool = False, progress: bool = True,
                    retry_failed: bool = False) -> PrepareSummary:
    """Prepare every sample of a manifest into the cache at `out` (see module docstring)."""
    from microfer.cache import Cache

    root, out = Path(root), Path(out)
    t_start = time.perf_counter()
    sample_list, unbounded = samples_of(samples)
    dupes = [k for k, n in pd.Series([s.key for s in sample_list]).value_counts().items() if n > 1]
    if dupes:
        raise MicroferError(f"the manifest lists {len(dupes)} clip(s) more than once: {', '.join(dupes[:5])}")

    cache = Cache.for_settings(out, settings)
    summary = PrepareSummary(settings.key(), cache.dir, total=len(sample_list) + len(unbounded))

    problems = check_layout(sample_list, root)
    if problems or unbounded:
        report = layout_report(unbounded + problems, summary.total)
        from microfer._io import write_text

        summary.layout_report_path = out / "layout_report.txt"
        write_text(summary.layout_report_path, report)
        head = "\n".join(report.splitlines()[:11])
        if strict:
            raise LayoutError(f"{head}\nfull report: {summary.layout_report_path} "
                              "(without --strict these clips are skipped)")
        print(f"{head}\nfull report: {summary.layout_report_path}; these clips are skipped", file=sys.stderr)
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

    bar = tqdm(total=len(todo), desc="prepare", unit="clip", disable=not progress or None, file=sys.stderr)
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
    try:
        if workers <= 1 or len(todo) <= 1:
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
                with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                         initializer=_init_worker) as pool:
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
                print("prepare: worker processes could not run (guard a calling script with "
                      "`if __name__ == '__main__':`); continuing in one process", file=sys.stderr)
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
                1e-9, time.perf_counter() - first_done)
    return summary
