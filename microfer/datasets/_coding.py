"""Shared reading of coding files: header search, cell parsing, subject ids, interval rules.

Every adapter turns one distributed coding file into the common manifest table
(`records.MANIFEST_COLUMNS`). Real copies of these files are messy; each mess has ONE
rule, applied by every adapter (the dataset modules list what applies to them):

H  header row: the first row (of the first 60) holding ALL the adapter's required
   column names, compared after stripping, collapsing inner whitespace and case-folding
   ("Onset Frame" != "OnsetFrame": spaces are kept, so a SAMM file is not mistaken for a
   CASME II one). Preamble rows, blank columns and moved columns do not matter.
F  formulas: .xlsx files are read with openpyxl `data_only=True`, i.e. the values Excel
   cached; a formula cell never computed (no cached value) reads as empty.
N  frame cells: int, integral float or digit text ("46", "46.0") are frame numbers;
   '/', '-1' (any negative), '', text and empty cells mean "not annotated".
D  onset or offset not annotated, or onset > offset: the row is DROPPED; each dropped row
   is listed in `df.attrs["dropped"]` (key + reason) and in one `CodingWarning`.
A1 apex not annotated: apex is null, note "apex not annotated ('/')" (raw cell quoted).
A2 apex outside [onset, offset]: apex is null, note "apex N outside [onset, offset],
   will be spotted" (the apex is then spotted from motion like any un-annotated apex).
A3 apex equal to onset or offset: kept, note "apex at clip start" / "apex at clip end";
   a one-frame clip (onset == offset) is kept with the note "single-frame clip".
S  subject codes: the digits of the cell (1, 1.0, '01', 'sub01', 's01', '006', '6')
   give the number, formatted as the dataset's canonical id (sub01, 006, s1, s15).
U  a (subject, clip) pair seen again: the later row is dropped (rule D's listing).
E  a file that is not .xlsx/.xlsm/.csv, cannot be opened, or has no row with the
   required columns (e.g. a SAMM file given to the CASME II adapter): AnnotationError
   naming the file and the expected columns.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from microfer.datasets._sheets import (  # noqa: F401  (re-exported: the adapters read them here)
    CSV_SUFFIXES,
    EXCEL_SUFFIXES,
    HEADER_SEARCH_ROWS,
    check_file,
    csv_rows,
    excel_sheets,
    find_header,
    norm_name,
    norm_text,
    read_sheets,
    read_table,
)
from microfer.errors import AnnotationError
from microfer.records import MANIFEST_COLUMNS, Sample, is_missing

INT_COLUMNS = ("onset", "apex", "offset")
STR_COLUMNS = ("dataset", "subject", "clip", "emotion", "label", "frame_template", "notes")


class CodingWarning(UserWarning):
    """Rows of a coding file that an adapter dropped (each one listed with its reason)."""


# ---------------------------------------------------------------- cells


def frame_number(value: Any) -> Optional[int]:
    """A frame-number cell as int, or None when it means 'not annotated' (rule N)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (float, np.floating)):
        if math.isnan(value) or not float(value).is_integer():
            return None
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?\d+(\.0*)?", text):
            return None
        number = int(float(text))
    else:
        return None
    return number if number >= 0 else None


def subject_number(value: Any, *, what: str = "subject") -> int:
    """The number in a subject cell: 1, 1.0, '01', 'sub01', 's01', '006' (rule S)."""
    text = norm_text(value)
    digits = re.findall(r"\d+", text)
    if len(digits) != 1:
        raise AnnotationError(f"{what} code {value!r} does not hold one subject number")
    return int(digits[0])


# Rule S, per dataset: (format of the canonical id, what a bad cell is called). The
# adapters' `canonical_subject` and `read_manifest` both format ids from this one table,
# so this module never imports an adapter (the adapters import it).
SUBJECT_FORMATS = {
    "casme2": ("sub{:02d}", "CASME II subject"),
    "samm": ("{:03d}", "SAMM subject"),
    "smic": ("s{}", "SMIC subject"),
}
# manifest `dataset` values -> their SUBJECT_FORMATS key (the SMIC cameras share SMIC's ids)
_SUBJECT_FORMAT_OF = {
    "casme2": "casme2",
    "samm": "samm",
    "smic_hs": "smic",
    "smic_vis": "smic",
    "smic_nir": "smic",
}


def canonical_subject(family: str, value: Any) -> str:
    """`value`'s subject number formatted as dataset `family`'s canonical id (rule S):
    canonical_subject("casme2", "1") == "sub01", ("samm", 6.0) -> "006", ("smic", "s01") -> "s1"."""
    template, what = SUBJECT_FORMATS[family]
    return template.format(subject_number(value, what=what))


# ---------------------------------------------------------------- rows and rules


@dataclass
class Dropped:
    key: str
    reason: str


@dataclass
class RowCollector:
    """Accumulates manifest rows and dropped rows of one coding file, then builds the table."""

    dataset: str
    source: str
    rows: list[dict] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    _seen: set = field(default_factory=set)

    def drop(self, key: str, reason: str) -> None:
        self.dropped.append(Dropped(key, reason))

    def add(
        self,
        *,
        subject: str,
        clip: str,
        onset: Any,
        apex: Any,
        offset: Any,
        emotion: str,
        label: str,
        frame_template: str,
        fps: float,
        notes: Iterable[str] = (),
        apex_raw: Any = None,
    ) -> bool:
        """Apply rules N, D, A1-A3, U to one row; False when it was dropped."""
        key = f"{subject}/{clip}"
        notes = [n for n in notes if n]
        if not clip:
            self.drop(key, "no clip name")
            return False
        on, off = frame_number(onset), frame_number(offset)
        if on is None or off is None:
            self.drop(
                key,
                f"onset/offset not annotated (onset {norm_text(onset)!r}, offset {norm_text(offset)!r})",
            )
            return False
        if on > off:
            self.drop(key, f"onset {on} > offset {off}")
            return False
        if (subject, clip) in self._seen:
            self.drop(key, "duplicate clip (an earlier row has the same subject and clip)")
            return False
        ap, apex_notes = check_apex(on, apex, off)
        self._seen.add((subject, clip))
        self.rows.append(
            dict(
                dataset=self.dataset,
                subject=subject,
                clip=clip,
                onset=on,
                apex=ap,
                offset=off,
                emotion=emotion,
                label=label,
                frame_template=frame_template,
                fps=float(fps),
                notes=";".join(notes + apex_notes),
            )
        )
        return True

    def frame(self) -> pd.DataFrame:
        df = manifest_frame(self.rows)
        df.attrs["source"] = self.source
        df.attrs["dropped"] = [{"key": d.key, "reason": d.reason} for d in self.dropped]
        if self.dropped:
            listing = "; ".join(f"{d.key}: {d.reason}" for d in self.dropped)
            warnings.warn(
                f"{self.source}: dropped {len(self.dropped)} row(s): {listing}",
                CodingWarning,
                stacklevel=3,
            )
        return df


def check_apex(onset: int, apex: Any, offset: int) -> tuple[Optional[int], list[str]]:
    """(apex or None, notes) under rules A1-A3."""
    ap = frame_number(apex)
    if ap is None:
        raw = norm_text(apex)
        return None, [f"apex not annotated ({raw!r})" if raw else "apex not annotated"]
    if ap < onset or ap > offset:
        return None, [f"apex {ap} outside [{onset}, {offset}], will be spotted"]
    if onset == offset:
        return ap, ["single-frame clip"]
    if ap == onset:
        return ap, ["apex at clip start"]
    if ap == offset:
        return ap, ["apex at clip end"]
    return ap, []


def manifest_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows (dicts with MANIFEST_COLUMNS) as a table with the manifest dtypes."""
    df = pd.DataFrame.from_records(list(rows), columns=MANIFEST_COLUMNS)
    return coerce_manifest(df)


def coerce_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Manifest dtypes: frame numbers nullable Int64, fps float, the rest str ('' for empty)."""
    df = df.copy()
    for col in INT_COLUMNS:
        df[col] = pd.array(
            [None if is_missing(v) else frame_number(v) for v in df[col]], dtype="Int64"
        )
    df["fps"] = df["fps"].astype(float)
    for col in STR_COLUMNS:
        df[col] = [norm_text(v) for v in df[col]]
        df[col] = df[col].astype(str)
    return df.reset_index(drop=True)


# ---------------------------------------------------------------- manifests on disk


def read_manifest(path) -> pd.DataFrame:
    """A manifest CSV, validated: all MANIFEST_COLUMNS, frame numbers integers or empty, fps > 0.

    onset/offset may be empty only where the source annotation lacks the clip (the
    composite's two SMIC clips); extra columns are kept after the manifest columns.
    """
    path = Path(path)
    df = _read_manifest_csv(path)
    _check_manifest_cells(path, df)
    df["subject"] = _canonical_subjects(df["dataset"], df["subject"])
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    out = coerce_manifest(df[MANIFEST_COLUMNS])
    for c in extra:
        out[c] = df[c].to_numpy()
    out.attrs["source"] = str(path)
    return out


def _read_manifest_csv(path: Path) -> pd.DataFrame:
    """The manifest as text cells, refused when absent, empty, unreadable or lacking columns."""
    if not path.is_file():
        raise AnnotationError(
            f"manifest {path} does not exist (expected a csv with columns "
            f"{', '.join(MANIFEST_COLUMNS)})"
        )
    if path.stat().st_size == 0:
        raise AnnotationError(
            f"manifest {path} is empty (0 bytes); expected a csv with columns "
            f"{', '.join(MANIFEST_COLUMNS)}"
        )
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AnnotationError(
            f"manifest {path} is not a readable csv ({exc.__class__.__name__}); "
            f"expected columns {', '.join(MANIFEST_COLUMNS)}"
        ) from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise AnnotationError(
            f"manifest {path} lacks column(s) {', '.join(missing)}; "
            f"expected columns {', '.join(MANIFEST_COLUMNS)}"
        )
    return df


def _check_manifest_cells(path: Path, df: pd.DataFrame) -> None:
    """Frame numbers, fps, the identifying cells and unique samples; the first bad row named."""
    for col in INT_COLUMNS:
        bad = [(i, v) for i, v in enumerate(df[col]) if v.strip() and frame_number(v) is None]
        if bad:
            i, v = bad[0]
            raise AnnotationError(
                f"manifest {path} row {i + 2}: {col} {v!r} is not a frame number "
                f"(non-negative integer or empty); {len(bad)} such row(s)"
            )
    fps = pd.to_numeric(df["fps"], errors="coerce")
    bad_fps = df.index[~(fps > 0)]
    if len(bad_fps):
        i = bad_fps[0]
        raise AnnotationError(
            f"manifest {path} row {i + 2}: fps {df['fps'][i]!r} is not a positive number"
        )
    for col in ("dataset", "subject", "clip", "frame_template"):
        empty = df.index[df[col].str.strip() == ""]
        if len(empty):
            raise AnnotationError(f"manifest {path} row {empty[0] + 2}: empty {col}")
    dup = df.duplicated(["dataset", "subject", "clip"])
    if dup.any():
        r = df[dup].iloc[0]
        raise AnnotationError(
            f"manifest {path}: sample {r['dataset']}/{r['subject']}/{r['clip']} appears twice"
        )


def _canonical_subjects(datasets: pd.Series, subjects: pd.Series) -> list[str]:
    """Subject ids as the adapters write them: a manifest edited in a spreadsheet or
    re-saved by pandas turns SAMM '006' into '6' and CASME II 'sub01' survives, '01' not."""
    out = []
    for d, s in zip(datasets, subjects):
        try:
            out.append(
                canonical_subject(_SUBJECT_FORMAT_OF[d], s) if d in _SUBJECT_FORMAT_OF else s
            )
        except AnnotationError:
            out.append(s)  # not a numbered subject: keep as written
    return out


def to_samples(df: pd.DataFrame) -> list:
    """`records.Sample`s of a manifest table (nullable apex -> None); rows without onset/offset refused."""
    out = []
    for rec in df[MANIFEST_COLUMNS].to_dict("records"):
        if is_missing(rec["onset"]) or is_missing(rec["offset"]):
            raise AnnotationError(
                f"{rec['dataset']}/{rec['subject']}/{rec['clip']}: no onset/offset in the "
                "manifest (bound the clip from its frame folder first)"
            )
        out.append(Sample.from_row(rec))
    return out


def read_clip_coding(
    coding: Path,
    *,
    name: str,
    title: str,
    required: Sequence[str],
    fps: float,
    canonical_subject,
    label_for,
    frame_template,
) -> pd.DataFrame:
    """The manifest of a coding table with one row per clip and columns `required` in the
    order Subject, Filename, onset, apex, offset, emotion (CASME II and SAMM)."""
    subject_col, clip_col, onset_col, apex_col, offset_col, emotion_col = required
    table = read_table(coding, required, what=f"{title} coding")
    rows = RowCollector(name, str(coding))
    for rec in table.to_dict("records"):
        try:
            subject = canonical_subject(rec[subject_col])
        except AnnotationError as exc:
            raise AnnotationError(f"{coding} row {rec['_row']}: {exc}") from None
        clip = norm_text(rec[clip_col])
        emotion = norm_text(rec[emotion_col])
        rows.add(
            subject=subject,
            clip=clip,
            onset=rec[onset_col],
            apex=rec[apex_col],
            offset=rec[offset_col],
            emotion=emotion,
            label=label_for(emotion),
            frame_template=frame_template(subject, clip),
            fps=fps,
        )
    return rows.frame()
