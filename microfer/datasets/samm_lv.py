"""SAMM Long Videos: `SAMM_LongVideos_V2_Release.csv` -> manifest of macro AND micro intervals.

The file as distributed has 9 preamble rows (title, symbol key, AU help and the note "apex
not annotated = -1"), then the header Subject, Filename, Inducement Code, Onset, Apex,
Offset, Duration, Type, Action Units, Notes; the header is found by its names (rule H), so
a copy without the preamble (or the .xlsx release) reads the same. One row per interval:
Filename `006_1_3` = interval 3 of long video `006_1` (subject 006, inducement 1); frames
are `SAMM_longvideos/006_1/006_1_0001.jpg` ... at 200 fps (absolute numbers, as in the
Onset/Apex/Offset columns). Type is `Macro` or `Micro - 1/2`.

Rules applied (see `_coding` for the shared ones):
- subject '006' / 6 -> `006` (S); apex -1 (6 rows of V2) -> null + note (A1);
- `notes` starts with `type=macro` or `type=micro` as in the CAS(ME)^2 manifest, so
  `casme_sq.expression_type(df)` reads both;
- V2 has no emotion column: emotion and label are '' (an `Emotion` column, where a copy has
  one, is kept as written);
- a repeated Filename (037_4_1 is both a micro and a macro interval in V2) is a second
  interval, not a duplicate: its clip id gets `@<onset>` appended (note "clip id made
  unique with the onset"); every interval of the file is kept;
- a Type other than Macro / Micro... -> AnnotationError naming the file and row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from microfer.datasets._coding import RowCollector, norm_text, read_table
from microfer.datasets._coding import canonical_subject as format_subject
from microfer.errors import AnnotationError

NAME = "samm_lv"
FPS = 200.0
DEFAULT_PROTOCOL = None  # spotting: see microfer.spotting.spot_eval.PROTOCOLS
REQUIRED = ("Subject", "Filename", "Onset", "Apex", "Offset", "Type")
OPTIONAL = ("Inducement Code", "Action Units", "Emotion", "Notes")
FRAMES_DIR = "SAMM_longvideos"

LAYOUT = """\
SAMM Long Videos (200 fps image sequences), dataset root = the folder holding SAMM_longvideos/:
  <root>/SAMM_longvideos/006_1/006_1_0001.jpg ... 006_1_NNNN.jpg
  frame_template: SAMM_longvideos/006_1/006_1_{frame:04d}.jpg   ({frame} = the number in the file name)
Coding file: SAMM_LongVideos_V2_Release.csv (9 preamble rows, header found by its names),
  columns Subject, Filename (006_1_3 = interval 3 of video 006_1), Inducement Code, Onset,
  Apex (-1 = not annotated), Offset, Duration, Type (Macro / Micro - 1/2), Action Units, Notes.
  Macro AND micro intervals are kept; notes start with type=macro|type=micro."""


def video_of(clip: str) -> str:
    """Long video of an interval's Filename: `006_1_3` -> `006_1`."""
    return clip.rsplit("_", 1)[0]


def frame_template(video: str) -> str:
    return f"{FRAMES_DIR}/{video}/{video}_{{frame:04d}}.jpg"


def interval_type(cell) -> str:
    """'macro' / 'micro' of a Type cell (`Macro`, `Micro - 1/2`), '' when it is neither."""
    text = norm_text(cell).lower()
    return "macro" if text.startswith("macro") else "micro" if text.startswith("micro") else ""


def read(coding: Optional[Path], root: Optional[Path] = None) -> pd.DataFrame:
    if coding is None:
        raise AnnotationError(
            f"SAMM Long Videos needs its coding file (SAMM_LongVideos_V2_Release.csv); "
            f"expected columns: {', '.join(REQUIRED)}"
        )
    coding = Path(coding)
    table = read_table(coding, REQUIRED, optional=OPTIONAL, what="SAMM Long Videos coding")
    clips = [norm_text(c) for c in table["Filename"]]
    repeats = pd.Series(clips).duplicated(keep="first").tolist()
    rows = RowCollector(NAME, str(coding))
    for rec, clip, repeated in zip(table.to_dict("records"), clips, repeats):
        kind = interval_type(rec["Type"])
        if not kind:
            raise AnnotationError(
                f"{coding} row {rec['_row']}: Type {norm_text(rec['Type'])!r} is neither "
                "Macro nor Micro"
            )
        try:
            subject = format_subject("samm", rec["Subject"])
        except AnnotationError as exc:
            raise AnnotationError(f"{coding} row {rec['_row']}: {exc}") from None
        notes = [f"type={kind}"]
        if repeated:
            clip = f"{clip}@{norm_text(rec['Onset'])}"
            notes.append("clip id made unique with the onset")
        if "_" not in clip:
            raise AnnotationError(
                f"{coding} row {rec['_row']}: Filename {clip!r} is not <video>_<n> (006_1_3)"
            )
        emotion = norm_text(rec.get("Emotion"))
        rows.add(
            subject=subject,
            clip=clip,
            onset=rec["Onset"],
            apex=rec["Apex"],
            offset=rec["Offset"],
            emotion=emotion,
            label="",
            frame_template=frame_template(video_of(clip.split("@")[0])),
            fps=FPS,
            notes=notes,
        )
    return rows.frame()
