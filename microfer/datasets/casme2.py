"""CASME II: `CASME2-coding-20140508.xlsx` or `CASME2-coding-20190701.xlsx` -> manifest.

Columns used: Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, Estimated Emotion
(the 2019 revision adds "Objective Classes", ignored: emotion stays Estimated Emotion).
Frame numbers are the numbers in the frame file names (`img46.jpg`), 200 fps.

Rules applied (see `_coding` for their exact wording):
- header row found by its column names (H), formulas read as cached values (F);
- Subject '01' / 1 / 'sub01' / '1' -> canonical `sub01` (S);
- ApexFrame '/' (sub04/EP12_01f in both official files) or -1 -> apex null, note (A1);
- apex outside [onset, offset] -> null, note, spotted later (A2); apex equal to onset or
  offset kept with a note (A3: 1 row at onset, 4 at offset in the official files);
- onset > offset or missing onset/offset -> row dropped and listed (D);
- label: the class under `casme2-5class` (happiness, surprise, disgust, repression,
  others); fear and sadness are excluded there (label '').
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from microfer.datasets._coding import canonical_subject as format_subject
from microfer.datasets._coding import read_clip_coding
from microfer.errors import AnnotationError

NAME = "casme2"
FPS = 200.0
DEFAULT_PROTOCOL = "casme2-5class"
CLASSES = ("happiness", "surprise", "disgust", "repression", "others")
REQUIRED = ("Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion")

LAYOUT = """\
CASME II (200 fps image sequences), dataset root = the folder holding the subject folders:
  <root>/sub01/EP02_01f/img46.jpg ... img86.jpg      (CASME2_RAW_selected)
  <root>/sub01/EP02_01f/reg_img46.jpg ...            (CASME2_Cropped: same folders, 'reg_' prefix;
                                                      the frame reader tells the two apart by prefix)
  frame_template: sub01/EP02_01f/img{frame}.jpg      ({frame} = the number in the file name)
Coding file: CASME2-coding-20140508.xlsx or CASME2-coding-20190701.xlsx (sheet 1), columns
  Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, Action Units, Estimated Emotion."""


def canonical_subject(value) -> str:
    return format_subject("casme2", value)


def frame_template(subject: str, clip: str) -> str:
    return f"{subject}/{clip}/img{{frame}}.jpg"


def label_for(emotion: str) -> str:
    key = emotion.strip().lower()
    return key if key in CLASSES else ""


def read(coding: Optional[Path], root: Optional[Path] = None) -> pd.DataFrame:
    if coding is None:
        raise AnnotationError(
            "CASME II needs its coding file (CASME2-coding-*.xlsx); "
            f"expected columns: {', '.join(REQUIRED)}"
        )
    return read_clip_coding(
        Path(coding),
        name=NAME,
        title="CASME II",
        required=REQUIRED,
        fps=FPS,
        canonical_subject=canonical_subject,
        label_for=label_for,
        frame_template=frame_template,
    )
