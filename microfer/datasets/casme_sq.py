"""CAS(ME)^2: `CAS(ME)^2code_final(Updated).csv` -> manifest of macro AND micro intervals.

The file has no header and 11 columns: subject index, clip (`anger1_1`), onset, apex,
offset, AUs, 4-class emotion, type (macro-expression / micro-expression), emotion,
duration, video (`s15/15_0401girlcrashing`). Frames are `rawpic/s15/15_0401.../img<N>.jpg`
(absolute numbers, 30 fps). Every interval is kept; `notes` starts with `type=macro` or
`type=micro` and `emotion4=<4-class emotion>`; `expression_type(df)` reads the type back
so that pretraining can take the macro-expressions and evaluation the micro ones.

Rules applied (see `_coding` for the shared ones):
- subject = the folder part of the video column (`s15`); the subject index column is not
  used (it maps 1:1 onto those folders in the official file);
- clip ids must be unique within a subject: a repeated (subject, clip) gets the video name
  appended (`anger1_1@15_0401girlcrashing`, note "clip id made unique") -- the official
  file has no such repeat;
- offset 0 (44 macro rows of the official file: offset not annotated) -> repaired to
  offset = apex + (apex - onset), capped at onset + 4 s (120 frames), note
  "offset 0 repaired to N"; when the apex cannot serve (not annotated or <= onset) the
  row is dropped and listed (D);
- apex outside [onset, offset] (3 rows with apex > offset, 1 row with apex 0) -> apex
  null + note, spotted later (A2);
- emotion is kept as written (`happyiness` included); `label` is the MEGC2019 composite
  class of the corrected emotion: anger, disgust, fear, sadness -> negative; happiness
  (and the typo happyiness) -> positive; surprise -> surprise; confused, helpless, pain,
  sympathy -> '' (excluded);
- a first row that is not numeric in the onset column (a re-saved copy with a header) is
  skipped; a file without 11 columns or with another type vocabulary -> AnnotationError.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pandas as pd

from microfer.datasets._coding import RowCollector, frame_number, norm_text, read_sheets
from microfer.errors import AnnotationError

NAME = "casme_sq"
FPS = 30.0
DEFAULT_PROTOCOL = "megc2019-composite"
COLUMNS = (
    "subject index",
    "clip",
    "onset",
    "apex",
    "offset",
    "action units",
    "emotion (4 classes)",
    "type (macro-expression/micro-expression)",
    "emotion",
    "duration",
    "video (sNN/NN_xxxx)",
)
TYPES = {"macro-expression": "macro", "micro-expression": "micro"}
MAX_REPAIRED_FRAMES = int(4 * FPS)  # a macro-expression lasts at most ~4 s
TYPOS = {"happyiness": "happiness"}
COMPOSITE = {
    "anger": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sadness": "negative",
    "happiness": "positive",
    "surprise": "surprise",
}

LAYOUT = """\
CAS(ME)^2 (30 fps long videos as image sequences), dataset root = the folder holding rawpic/:
  <root>/rawpic/s15/15_0401girlcrashing/img1.jpg ... imgN.jpg
  frame_template: rawpic/s15/15_0401girlcrashing/img{frame}.jpg
Coding file: CAS(ME)^2code_final(Updated).csv, no header, 11 columns: subject index, clip,
  onset, apex, offset, AUs, 4-class emotion, type (macro-expression/micro-expression),
  emotion, duration, video (s15/15_0401girlcrashing). Macro AND micro intervals are kept;
  notes start with type=macro|type=micro."""


def frame_template(video: str) -> str:
    return f"rawpic/{video}/img{{frame}}.jpg"


def label_for(emotion: str) -> str:
    key = emotion.strip().lower()
    return COMPOSITE.get(TYPOS.get(key, key), "")


def expression_type(df: pd.DataFrame) -> pd.Series:
    """'macro' / 'micro' per row of a casme_sq manifest (from its notes), '' elsewhere."""
    return (
        df["notes"]
        .astype(str)
        .str.extract(r"(?:^|;)type=(macro|micro)(?:;|$)", expand=False)
        .fillna("")
    )


def _bad_file(coding: Path, why: str) -> AnnotationError:
    return AnnotationError(
        f"CAS(ME)^2 coding file {coding}: {why}; expected a header-less csv with 11 "
        f"columns: {', '.join(COLUMNS)}"
    )


def _raw_rows(coding: Path) -> list[list]:
    """The coding file's non-empty rows, checked for 11 columns and the type vocabulary."""
    sheets = read_sheets(coding, "CAS(ME)^2 coding", COLUMNS)
    raw = [r for r in next(iter(sheets.values())) if any(norm_text(c) for c in r)]
    if raw and frame_number(raw[0][2] if len(raw[0]) > 2 else None) is None:
        raw = raw[1:]  # a header row some copies carry
    if not raw:
        raise _bad_file(coding, "no rows")
    short = [i for i, r in enumerate(raw) if len(r) < len(COLUMNS)]
    if short:
        raise _bad_file(
            coding,
            f"{len(short)} row(s) with fewer than {len(COLUMNS)} columns (first: {raw[short[0]]})",
        )
    unknown = sorted({norm_text(r[7]) for r in raw} - set(TYPES))
    if unknown:
        raise _bad_file(
            coding, f"column 8 holds {unknown[:3]}, not macro-expression/micro-expression"
        )
    return raw


def _videos(coding: Path, raw: list[list]) -> list[str]:
    videos = [norm_text(r[10]) for r in raw]
    bad_video = [v for v in videos if not re.fullmatch(r"[sS]\d+/[^/]+", v)]
    if bad_video:
        raise _bad_file(coding, f"column 11 holds {bad_video[0]!r}, not a video path sNN/<name>")
    return videos


def _add_interval(
    rows: RowCollector, r: list, subject: str, clip: str, video: str, repeated: bool
) -> None:
    """One coding row -> one manifest row (or a dropped one), with its notes."""
    kind = TYPES[norm_text(r[7])]
    notes = [f"type={kind}", f"emotion4={norm_text(r[6])}"]
    if repeated:
        clip = f"{clip}@{video.split('/', 1)[1]}"
        notes.append("clip id made unique with the video name")
    onset, apex, offset = frame_number(r[2]), frame_number(r[3]), frame_number(r[4])
    if offset == 0 and onset is not None:
        if apex is None or apex <= onset:
            rows.drop(
                f"{subject}/{clip}",
                f"offset 0 (not annotated) and apex {norm_text(r[3])!r} cannot bound the interval",
            )
            return
        offset = min(apex + (apex - onset), onset + MAX_REPAIRED_FRAMES)
        notes.append(
            f"offset 0 repaired to {offset} = min(apex + (apex - onset), onset + {MAX_REPAIRED_FRAMES})"
        )
    emotion = norm_text(r[8])
    if emotion.strip().lower() in TYPOS:
        notes.append(f"emotion typo {emotion!r} read as {TYPOS[emotion.strip().lower()]!r}")
    rows.add(
        subject=subject,
        clip=clip,
        onset=onset,
        apex=r[3],
        offset=offset,
        emotion=emotion,
        label=label_for(emotion),
        frame_template=frame_template(video),
        fps=FPS,
        notes=notes,
    )


def read(coding: Optional[Path], root: Optional[Path] = None) -> pd.DataFrame:
    if coding is None:
        raise AnnotationError(
            f"CAS(ME)^2 needs its coding file (CAS(ME)^2code_final(Updated).csv); "
            f"expected columns: {', '.join(COLUMNS)}"
        )
    coding = Path(coding)
    raw = _raw_rows(coding)
    videos = _videos(coding, raw)
    subjects = [f"s{int(v.split('/')[0][1:])}" for v in videos]
    clips = [norm_text(r[1]) for r in raw]
    seen: dict[tuple[str, str], int] = {}
    for s, c in zip(subjects, clips):
        seen[(s, c)] = seen.get((s, c), 0) + 1
    rows = RowCollector(NAME, str(coding))
    for r, subject, clip, video in zip(raw, subjects, clips, videos):
        _add_interval(rows, r, subject, clip, video, seen[(subject, clip)] > 1)
    return rows.frame()
