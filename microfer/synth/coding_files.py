"""The coding files of the synthetic datasets, written in each dataset's real format.

Headers, preambles, sheet names and cell types copy the official files (tests/test_synth.py
compares the header rows with the real ones); the xlsx files are saved byte-identically for
identical content, so the same seed gives the same coding file.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from microfer.io import atomic_path

CASME_SQ_CLASS4 = {
    "anger": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sadness": "negative",
    "happiness": "positive",
    "surprise": "surprise",
}
SAMM_OBJECTIVE = {
    "happiness": 1,
    "surprise": 2,
    "anger": 3,
    "disgust": 4,
    "sadness": 5,
    "fear": 6,
    "contempt": 7,
    "other": 7,
}


def au_cell(aus: str):
    """A single numeric AU is a number in the real files ('12' -> 12), combinations are text."""
    return int(aus) if aus.isdigit() else aus


@dataclass
class CodedEvent:
    """One row of a coding file."""

    subject_code: str  # as written in the coding file
    clip: str
    onset: int
    apex: int | None  # None = not annotated
    offset: int
    emotion: str
    aus: str
    first_frame: int
    last_frame: int
    kind: str = "micro"  # micro | macro
    extra: dict = field(default_factory=dict)


# ---- deterministic xlsx --------------------------------------------------------------------------

FIXED_TIME = "2020-01-01T00:00:00Z"


def save_workbook(wb, path: Path) -> None:
    """Save an openpyxl workbook byte-identically for identical content.

    openpyxl stamps the save time into docProps/core.xml and zip entries carry the time of
    writing; both are pinned so the same seed gives the same file.
    """
    fixed = datetime.datetime(2020, 1, 1)
    wb.properties.created = fixed
    wb.properties.modified = fixed
    wb.properties.creator = "microfer synth"
    wb.properties.title = "SYNTHETIC coding file written by microfer synth (not real data)"
    buf = io.BytesIO()
    wb.save(buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                if info.filename == "docProps/core.xml":
                    data = re.sub(
                        rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                        rb"\g<1>" + FIXED_TIME.encode() + rb"\g<2>",
                        data,
                    )
                zi = zipfile.ZipInfo(info.filename, date_time=(2020, 1, 1, 0, 0, 0))
                zi.compress_type = zipfile.ZIP_DEFLATED
                zi.external_attr = 0o644 << 16
                dst.writestr(zi, data)


def text_cell(ws, row: int, col: int, value: str) -> None:
    cell = ws.cell(row=row, column=col, value=value)
    cell.number_format = "@"


# ---- writers -------------------------------------------------------------------------------------

CASME2_HEADER = [
    "Subject",
    "Filename",
    None,
    "OnsetFrame",
    "ApexFrame",
    "OffsetFrame",
    None,
    "Action Units",
    "Estimated Emotion",
]


def sheet_with_header(title: str, header: Sequence, row: int = 1):
    """A new workbook whose active sheet `title` has `header` (None = blank column) on `row`."""
    from openpyxl import Workbook  # openpyxl loads only when a coding file is written

    wb = Workbook()
    ws = wb.active
    ws.title = title
    for col, name in enumerate(header, 1):
        if name is not None:
            ws.cell(row=row, column=col, value=name)
    return wb, ws


def write_casme2_coding(events: Sequence[CodedEvent], path: Path) -> None:
    """CASME2-coding-20140508.xlsx: Sheet1 (header row 1), empty Sheet2/Sheet3; apex '/' if unknown."""
    wb, ws = sheet_with_header("Sheet1", CASME2_HEADER)
    ws.cell(row=1, column=1).number_format = "@"
    for r, e in enumerate(sorted(events, key=lambda e: (e.subject_code, e.clip)), 2):
        text_cell(ws, r, 1, e.subject_code)
        ws.cell(row=r, column=2, value=e.clip)
        ws.cell(row=r, column=4, value=e.onset)
        ws.cell(row=r, column=5, value=e.apex if e.apex is not None else "/")
        ws.cell(row=r, column=6, value=e.offset)
        ws.cell(row=r, column=8, value=au_cell(e.aus))
        ws.cell(row=r, column=9, value=e.emotion)
    wb.create_sheet("Sheet2")
    wb.create_sheet("Sheet3")
    save_workbook(wb, path)


SAMM_HEADER = [
    "Subject",
    "Filename",
    "Inducement Code",
    "Onset Frame",
    "Apex Frame",
    "Offset Frame",
    "Duration",
    "Micro",
    "Action Units",
    "Estimated Emotion",
    "Objective Classes",
    "Notes",
]
SAMM_HEADER_ROW = 14
SAMM_PREAMBLE = {
    (1, 1): "SAMM Dataset - Master FACS Codes",
    (
        1,
        5,
    ): "(Note to the users: If you're using SAMM, please cite: Davison, A. K., Lansley, C., Costen, N., "
    "Tan, K., & Yap, M. H. (2016). SAMM: A spontaneous micro-facial movement dataset. IEEE "
    "Transactions on Affective Computing.)",
    (
        3,
        1,
    ): "9/9/17 - New updates with Emotional and Objective Classes. For details please refer to: ",
    (3, 9): "arXiv preprint arXiv:1708.07549.",
    (
        4,
        5,
    ): "(Note to the users: if you're using the emotional or objective classes, please cite: Davison, "
    "A. K., Merghani, W., & Yap, M. H. (2017). Objective Classes for Micro-Facial Expression "
    "Recognition. arXiv preprint arXiv:1708.07549.)",
    (6, 1): "Symbol Key:",
    (7, 1): '"/" = or',
    (8, 1): '"?" = some AU\'s continue for a while and have unclear offset',
    (10, 1): "AU Help:",
    (11, 1): '"L2 or R2" = Unilateral AU 2 on left side of face / right side of face',
    (12, 1): '"A2" = Asymmetric AU 2. Occurs on both sides of face but stronger on one side',
}


def write_samm_coding(events: Sequence[CodedEvent], path: Path, note: str = "") -> None:
    """SAMM_Micro_FACS_Codes_v2.xlsx: sheet MICRO_ONLY, 13 preamble rows, header row 14.

    Duration is written as a value (the real file has a formula with a cached value; a formula
    written here would have none, and readers would see it empty). Apex -1 = not annotated.
    """
    wb, ws = sheet_with_header("MICRO_ONLY", SAMM_HEADER, SAMM_HEADER_ROW)
    for (r, c), text in SAMM_PREAMBLE.items():
        ws.cell(row=r, column=c, value=text)
    if note:  # row 2 is empty in the real file
        ws.cell(row=2, column=1, value=note)
    ws.cell(row=SAMM_HEADER_ROW, column=1).number_format = "@"
    for r, e in enumerate(
        sorted(events, key=lambda e: (e.subject_code, e.clip)), SAMM_HEADER_ROW + 1
    ):
        text_cell(ws, r, 1, e.subject_code)
        values = [
            e.clip,
            e.extra["inducement"],
            e.onset,
            e.apex if e.apex is not None else -1,
            e.offset,
            e.offset - e.onset + 1,
            "Micro - 1/2" if e.kind == "micro" else "Macro",
            au_cell(e.aus),
            e.emotion,
            SAMM_OBJECTIVE.get(e.emotion.lower(), 7),
            None,
        ]
        for c, v in enumerate(values, 2):
            if v is not None:
                ws.cell(row=r, column=c, value=v)
    save_workbook(wb, path)


SMIC_HS_HEADER = [
    "Subject",
    "Filename",
    None,
    "OnsetF",
    "OffsetF",
    "Onset2F",
    "Offset2F",
    None,
    "FirstF",
    "LastF",
    "TotalMF1",
    "TotalMF2",
    "TotalVL",
    "Emotion",
]
SMIC_VIS_HEADER = [
    "Subject",
    "Filename",
    None,
    "OnsetF",
    "OffsetF",
    "Onset2F",
    "Offset2F",
    None,
    "FirstF",
    "TotalMF1",
    "TotalMF2",
    "TotalVL",
    "Emotion",
]


def write_smic_coding(events: Sequence[CodedEvent], path: Path) -> None:
    """SMIC-HS-E_annotation_orig.xlsx: sheet HS (no apex column), VIS with its header only.

    FirstF/LastF are the first and last frame in the clip folder, TotalMF1 the onset..offset
    length, TotalVL the folder length, as in the real sheet (values, not formulas).
    """
    wb, ws = sheet_with_header("HS", SMIC_HS_HEADER)
    for r, e in enumerate(sorted(events, key=lambda e: (int(e.subject_code), e.clip)), 2):
        values = [
            int(e.subject_code),
            e.clip,
            None,
            e.onset,
            e.offset,
            None,
            None,
            None,
            e.first_frame,
            e.last_frame,
            e.offset - e.onset + 1,
            None,
            e.last_frame - e.first_frame + 1,
            e.emotion,
        ]
        for c, v in enumerate(values, 1):
            if v is not None:
                ws.cell(row=r, column=c, value=v)
    vis = wb.create_sheet("VIS")
    for col, name in enumerate(SMIC_VIS_HEADER, 1):
        if name is not None:
            vis.cell(row=1, column=col, value=name)
    wb.create_sheet("Sheet2")
    wb.create_sheet("Sheet3")
    save_workbook(wb, path)


def write_casme_sq_coding(events: Sequence[CodedEvent], path: Path) -> None:
    """CAS(ME)^2code_final.csv: 11 columns, no header; duration = offset - onset as in the real file."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for e in sorted(events, key=lambda e: (int(e.subject_code), e.extra["video"], e.onset)):
        w.writerow(
            [
                e.subject_code,
                e.clip,
                e.onset,
                e.apex if e.apex is not None else -1,
                e.offset,
                e.aus or "NULL",
                CASME_SQ_CLASS4.get(e.emotion, "others"),
                "micro-expression" if e.kind == "micro" else "macro-expression",
                e.emotion,
                e.offset - e.onset,
                e.extra["video"],
            ]
        )
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue().encode("utf-8"))


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


WRITERS: dict[str, Callable] = {
    "casme2": write_casme2_coding,
    "samm": write_samm_coding,
    "smic": write_smic_coding,
    "casme_sq": write_casme_sq_coding,
}
