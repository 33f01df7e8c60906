"""SAMM: `SAMM_Micro_FACS_Codes_v2.xlsx` (sheet MICRO_ONLY) -> manifest.

The official file has 13 preamble rows (header on row 14); copies circulate with the
preamble removed or the blank columns dropped, so the header row is found by its column
names: Subject, Filename, Onset Frame, Apex Frame, Offset Frame, Estimated Emotion.
Frame numbers are the numbers in the frame file names (`006_05562.jpg`), 200 fps.

Rules applied (see `_coding`):
- header found by its names (H), formulas read as cached values (F);
- Subject '006' / 6 / '6' -> canonical `006` (S);
- apex '/' or -1 -> null + note (A1); apex outside [onset, offset] (a typo in some
  circulating copies) -> null + note, spotted later (A2); apex at an end kept + note (A3);
- onset > offset or missing onset/offset -> dropped and listed (D);
- label: the class under `samm-5class` (Anger, Contempt, Happiness, Surprise, Other);
  Disgust, Fear and Sadness are excluded there (label '').
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from microfer.datasets._coding import canonical_subject as format_subject
from microfer.datasets._coding import read_clip_coding
from microfer.errors import AnnotationError

NAME = "samm"
FPS = 200.0
DEFAULT_PROTOCOL = "samm-5class"
CLASSES = ("Anger", "Contempt", "Happiness", "Surprise", "Other")
REQUIRED = ("Subject", "Filename", "Onset Frame", "Apex Frame", "Offset Frame", "Estimated Emotion")

LAYOUT = """\
SAMM (200 fps image sequences), dataset root = the folder holding the subject folders:
  <root>/006/006_1_2/006_05562.jpg ... 006_05632.jpg
  frame_template: 006/006_1_2/006_{frame:05d}.jpg   ({frame} = the number in the file name)
Coding file: SAMM_Micro_FACS_Codes_v2.xlsx (sheet MICRO_ONLY; 13 preamble rows, header found
  by its names), columns Subject, Filename, Onset Frame, Apex Frame, Offset Frame,
  Action Units, Estimated Emotion."""

_CLASS_BY_KEY = {c.lower(): c for c in CLASSES}


def canonical_subject(value) -> str:
    return format_subject("samm", value)


def frame_template(subject: str, clip: str) -> str:
    return f"{subject}/{clip}/{subject}_{{frame:05d}}.jpg"


def label_for(emotion: str) -> str:
    return _CLASS_BY_KEY.get(emotion.strip().lower(), "")


def read(coding: Optional[Path], root: Optional[Path] = None) -> pd.DataFrame:
    if coding is None:
        raise AnnotationError(
            "SAMM needs its coding file (SAMM_Micro_FACS_Codes_v2.xlsx); "
            f"expected columns: {', '.join(REQUIRED)}"
        )
    return read_clip_coding(
        Path(coding),
        name=NAME,
        title="SAMM",
        required=REQUIRED,
        fps=FPS,
        canonical_subject=canonical_subject,
        label_for=label_for,
        frame_template=frame_template,
    )
