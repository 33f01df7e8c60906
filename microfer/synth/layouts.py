"""Each dataset's real on-disk layout and coding-file format, for synthetic clips.

The names, numbering and coding files mirror the official ones (see tests/test_synth.py,
which compares the header rows with the real files): a dataset adapter cannot tell a
synthetic root from a real one except by the pixels and the `-synth` in the coding file name.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from microfer.errors import MicroferError
from microfer.io import atomic_path


@dataclass(frozen=True)
class LayoutSpec:
    name: str  # layout name on the command line
    dataset: str  # registry/manifest dataset name
    frame_size: tuple[int, int]  # (W, H) of the frames written
    face_width: tuple[float, float]  # face width range in px (jaw to jaw)
    fps: float
    emotions: tuple[str, ...]  # default emotions (coding-file spelling)
    allowed: tuple[str, ...]  # every emotion the layout can write
    image_ext: str  # ".jpg", ".bmp", ".mp4"
    coding_name: str | None  # coding file name in the root
    clip_frames: tuple[int, int] = (
        24,
        40,
    )  # default frames per short clip (neutral frames included)


LAYOUTS: dict[str, LayoutSpec] = {
    # CASME II: 640x480 at 200 fps; faces about 200-280 px wide.
    "casme2": LayoutSpec(
        "casme2",
        "casme2",
        (640, 480),
        (200, 280),
        200.0,
        ("happiness", "surprise", "disgust", "repression", "others"),
        ("happiness", "surprise", "disgust", "repression", "others", "sadness", "fear"),
        ".jpg",
        "CASME2-coding-synth.xlsx",
    ),
    # SAMM: the real frames are 2040x1088 at 200 fps; written smaller (960x540), same aspect.
    "samm": LayoutSpec(
        "samm",
        "samm",
        (960, 540),
        (190, 260),
        200.0,
        ("Anger", "Contempt", "Happiness", "Surprise", "Other"),
        ("Anger", "Contempt", "Happiness", "Surprise", "Other", "Disgust", "Fear", "Sadness"),
        ".jpg",
        "SAMM_Micro_FACS_Codes_v2-synth.xlsx",
    ),
    # SMIC-E HS: 640x480 at 100 fps, bitmap frames; half the frame rate, so shorter clips
    # (also: a 640x480 bitmap is 0.9 MB).
    "smic": LayoutSpec(
        "smic",
        "smic_hs",
        (640, 480),
        (170, 230),
        100.0,
        ("negative", "positive", "surprise"),
        ("negative", "positive", "surprise"),
        ".bmp",
        "SMIC-HS-E_annotation-synth.xlsx",
        (16, 26),
    ),
    # CAS(ME)^2 long videos: 640x480 at 30 fps, macro and micro intervals.
    "casme_sq": LayoutSpec(
        "casme_sq",
        "casme_sq",
        (640, 480),
        (180, 240),
        30.0,
        ("anger", "disgust", "happiness", "surprise"),
        ("anger", "disgust", "happiness", "surprise", "fear", "sadness"),
        ".jpg",
        "CAS(ME)^2code_final-synth.csv",
    ),
    # single video files for the one-clip prediction path
    "video": LayoutSpec(
        "video",
        "video",
        (640, 480),
        (200, 280),
        30.0,
        ("happiness", "surprise", "disgust", "repression", "others"),
        (
            "happiness",
            "surprise",
            "disgust",
            "repression",
            "others",
            "sadness",
            "fear",
            "anger",
            "contempt",
            "negative",
            "positive",
        ),
        ".mp4",
        None,
    ),
}

# MEGC2019 composite classes of each native emotion (empty = excluded from the composite)
CLASS3 = {
    "casme2": {
        "disgust": "negative",
        "repression": "negative",
        "happiness": "positive",
        "surprise": "surprise",
    },
    "samm": {
        "anger": "negative",
        "contempt": "negative",
        "disgust": "negative",
        "fear": "negative",
        "sadness": "negative",
        "happiness": "positive",
        "surprise": "surprise",
    },
    "smic": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
    "casme_sq": {
        "anger": "negative",
        "disgust": "negative",
        "fear": "negative",
        "sadness": "negative",
        "happiness": "positive",
        "surprise": "surprise",
    },
    "video": {
        "disgust": "negative",
        "repression": "negative",
        "anger": "negative",
        "contempt": "negative",
        "negative": "negative",
        "happiness": "positive",
        "positive": "positive",
        "surprise": "surprise",
    },
}

SAMM_SUBJECTS = [
    "006",
    "007",
    "009",
    "010",
    "011",
    "012",
    "013",
    "014",
    "015",
    "016",
    "017",
    "018",
    "019",
    "020",
    "021",
    "022",
    "023",
    "024",
    "025",
    "026",
    "028",
    "030",
    "031",
    "032",
    "033",
    "034",
    "035",
    "036",
    "037",
]
SMIC_HS_SUBJECTS = [1, 2, 3, 4, 5, 6, 8, 9, 11, 12, 13, 14, 15, 18, 19, 20]
SMIC_ABBR = {"negative": "ne", "positive": "po", "surprise": "sur"}
# CAS(ME)^2 elicitation videos: code -> clip-name stem and the emotion they elicit
CASME_SQ_VIDEOS = [
    ("0401girlcrashing", "anger1", "anger"),
    ("0101disgustingteeth", "disgust1", "disgust"),
    ("0502funnyerrors", "happy1", "happiness"),
    ("0402beatingpregnantwoman", "anger2", "anger"),
    ("0102eatingworms", "disgust2", "disgust"),
    ("0503unnyfarting", "happy2", "happiness"),
    ("0505funnyinnovations", "happy3", "happiness"),
    ("0507climbingthewall", "happy4", "happiness"),
    ("0508funnydunkey", "happy5", "happiness"),
]
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


def get_layout(name: str) -> LayoutSpec:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise MicroferError(
            f"unknown synth layout {name!r}; expected one of {', '.join(LAYOUTS)}"
        ) from None


def native_emotion(spec: LayoutSpec, emotion: str) -> str:
    """`emotion` in the layout's own spelling (case-insensitive match), or an error."""
    for e in spec.allowed:
        if e.lower() == emotion.strip().lower():
            return e
    raise MicroferError(
        f"layout {spec.name} has no emotion {emotion!r}; expected one of {', '.join(spec.allowed)}"
    )


def class3(layout: str, emotion: str) -> str:
    return CLASS3.get(layout, {}).get(emotion.lower(), "")


def subject_ids(layout: str, n: int) -> list[tuple[str, str]]:
    """(canonical subject id, subject code as the coding file writes it) for n subjects."""
    if layout == "casme2":
        return [(f"sub{i + 1:02d}", f"{i + 1:02d}") for i in range(n)]
    if layout == "samm":
        codes = SAMM_SUBJECTS + [f"{k:03d}" for k in range(38, 38 + max(0, n - len(SAMM_SUBJECTS)))]
        return [(c, c) for c in codes[:n]]
    if layout == "smic":
        nums = SMIC_HS_SUBJECTS + list(range(21, 21 + max(0, n - len(SMIC_HS_SUBJECTS))))
        return [(f"s{k}", str(k)) for k in nums[:n]]
    if layout == "casme_sq":
        return [(f"s{15 + i}", str(i + 1)) for i in range(n)]
    if layout == "video":
        return [(f"p{i + 1:02d}", f"{i + 1:02d}") for i in range(n)]
    raise MicroferError(f"unknown synth layout {layout!r}")


def clip_names(
    layout: str, subject: str, emotions: Sequence[str], rng: np.random.Generator
) -> list[str]:
    """Unique, real-looking clip names for one subject's clips (in the order of `emotions`)."""
    n = len(emotions)
    if layout == "casme2":
        pairs = rng.choice(19 * 9, size=n, replace=False)
        return [
            f"EP{p // 9 + 1:02d}_{p % 9 + 1:02d}{'f' if rng.random() < 0.5 else ''}" for p in pairs
        ]
    if layout == "samm":
        counts: dict[int, int] = {}
        names = []
        for _ in range(n):
            code = int(rng.integers(1, 8))
            counts[code] = counts.get(code, int(rng.integers(0, 3))) + 1
            names.append(f"{subject}_{code}_{counts[code]}")
        return names
    if layout == "smic":
        counts = {}
        names = []
        for e in emotions:
            counts[e] = counts.get(e, 0) + 1
            names.append(f"{subject}_{SMIC_ABBR[e]}_{counts[e]:02d}")
        return names
    if layout == "video":
        return [f"{subject}_{k + 1:02d}" for k in range(n)]
    raise MicroferError(f"layout {layout} names clips per video, not per subject")


def frame_dir(layout: str, subject: str, clip: str, emotion: str = "", video: str = "") -> str:
    """Folder of a clip's frames relative to the root (POSIX separators)."""
    if layout == "casme2":
        return f"{subject}/{clip}"
    if layout == "samm":
        return f"{subject}/{clip}"
    if layout == "smic":
        return f"HS/{subject}/micro/{emotion}/{clip}"
    if layout == "casme_sq":
        return f"rawpic/{video}"
    if layout == "video":
        return "clips"
    raise MicroferError(f"unknown synth layout {layout!r}")


def frame_name(layout: str, subject: str, frame: int, ext: str) -> str:
    if layout == "samm":
        return f"{subject}_{frame:05d}{ext}"
    if layout == "smic":
        return f"image{frame}{ext}"
    return f"img{frame}{ext}"


def format_aus(codes: Sequence[str]) -> str:
    """'4+L10' style: AUs sorted by number, duplicates dropped."""
    parts: list[str] = []
    for code in codes:
        for p in str(code).split("+"):
            if p and p not in parts:
                parts.append(p)
    return "+".join(sorted(parts, key=lambda p: (int(re.sub(r"\D", "", p) or 0), p)))


def _au_cell(aus: str):
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
    import datetime

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


def _text_cell(ws, row: int, col: int, value: str) -> None:
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


def _sheet_with_header(title: str, header: Sequence, row: int = 1):
    """A new workbook whose active sheet `title` has `header` (None = blank column) on `row`."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = title
    for col, name in enumerate(header, 1):
        if name is not None:
            ws.cell(row=row, column=col, value=name)
    return wb, ws


def write_casme2_coding(events: Sequence[CodedEvent], path: Path) -> None:
    """CASME2-coding-20140508.xlsx: Sheet1 (header row 1), empty Sheet2/Sheet3; apex '/' if unknown."""
    wb, ws = _sheet_with_header("Sheet1", CASME2_HEADER)
    ws.cell(row=1, column=1).number_format = "@"
    for r, e in enumerate(sorted(events, key=lambda e: (e.subject_code, e.clip)), 2):
        _text_cell(ws, r, 1, e.subject_code)
        ws.cell(row=r, column=2, value=e.clip)
        ws.cell(row=r, column=4, value=e.onset)
        ws.cell(row=r, column=5, value=e.apex if e.apex is not None else "/")
        ws.cell(row=r, column=6, value=e.offset)
        ws.cell(row=r, column=8, value=_au_cell(e.aus))
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
    wb, ws = _sheet_with_header("MICRO_ONLY", SAMM_HEADER, SAMM_HEADER_ROW)
    for (r, c), text in SAMM_PREAMBLE.items():
        ws.cell(row=r, column=c, value=text)
    if note:  # row 2 is empty in the real file
        ws.cell(row=2, column=1, value=note)
    ws.cell(row=SAMM_HEADER_ROW, column=1).number_format = "@"
    for r, e in enumerate(
        sorted(events, key=lambda e: (e.subject_code, e.clip)), SAMM_HEADER_ROW + 1
    ):
        _text_cell(ws, r, 1, e.subject_code)
        values = [
            e.clip,
            e.extra["inducement"],
            e.onset,
            e.apex if e.apex is not None else -1,
            e.offset,
            e.offset - e.onset + 1,
            "Micro - 1/2" if e.kind == "micro" else "Macro",
            _au_cell(e.aus),
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
    wb, ws = _sheet_with_header("HS", SMIC_HS_HEADER)
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


WRITERS: dict[str, Callable] = {
    "casme2": write_casme2_coding,
    "samm": write_samm_coding,
    "smic": write_smic_coding,
    "casme_sq": write_casme_sq_coding,
}
