"""The dataset layout check: one report of every clip that cannot be prepared, before any
work (missing or renamed folders, frames not covering onset..offset, unreadable videos)."""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Sequence

from microfer.clip.video import (
    frame_ranges,
    frames_for_sample,
    list_sequences,
    open_frames,
    sample_location,
)
from microfer.errors import LayoutError, MicroferError
from microfer.records import ClipFailure, Sample, is_missing


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
    root = Path(root)
    if not root.is_dir():
        return [
            ClipFailure(s.key, "layout", f"dataset root {root} does not exist") for s in samples
        ]
    frames_in = _FrameLister()
    problems = []
    for s in samples:
        try:
            location, prefix = sample_location(root, s)
            if not location.exists():
                raise LayoutError(f"{location} is missing: {_missing_hint(location)}")
            have = set(frames_in(location, prefix))
        except (LayoutError, MicroferError) as exc:
            problems.append(ClipFailure(s.key, "layout", str(exc)))
            continue
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


class _FrameLister:
    """Frame numbers of a clip location (a frame folder's sequence, or a video), each
    folder listed and each video opened once however many clips share it."""

    def __init__(self):
        self.listings: dict[Path, dict] = {}
        self.videos: dict[Path, list[int]] = {}

    def __call__(self, location: Path, prefix) -> list[int]:
        if not location.is_dir():
            if location not in self.videos:
                self.videos[location] = open_frames(location).numbers
            return self.videos[location]
        if location not in self.listings:
            self.listings[location] = list_sequences(location)
        groups = self.listings[location]
        if not groups:
            raise LayoutError(f"{location} is empty (no numbered frames)")
        if prefix is None:
            if len(groups) != 1:
                names = ", ".join(repr(p) for p in sorted(groups))
                raise LayoutError(f"{location} holds several sequences ({names})")
            prefix = next(iter(groups))
        if prefix not in groups:
            found = ", ".join(repr(p + "<n>") for p in sorted(groups))
            raise LayoutError(f"{location} has no frames named '{prefix}<n>' (found {found})")
        return groups[prefix]


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


def inputs_fingerprint(root: Path, sample: Sample) -> str:
    """What a prepared clip was built from, as a short hash: the coding row's frames
    (onset/apex/offset) and the identity of the frames onset..offset (name, size and
    modification time of each frame file, or of the video file). A corrected apex or a
    replaced frame changes it; the emotion label does not (prepare does not read it).
    "" when the frames cannot be listed (the layout check reports those)."""
    try:
        source = frames_for_sample(root, sample)
    except MicroferError:
        return ""
    files = getattr(source, "files", None)
    paths = (
        [files[n] for n in sorted(files) if sample.onset <= n <= sample.offset]
        if files is not None
        else [Path(source.path)]
        if getattr(source, "path", None)
        else []
    )
    try:
        frames = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    except OSError:
        return ""
    doc = {"onset": sample.onset, "apex": sample.apex, "offset": sample.offset, "frames": frames}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
