"""Each dataset's real on-disk layout and coding-file format, for synthetic clips.

The names, numbering and coding files mirror the official ones (see tests/test_synth.py,
which compares the header rows with the real files): a dataset adapter cannot tell a
synthetic root from a real one except by the pixels and the `-synth` in the coding file name.
The coding-file writers are in `coding_files` (imported here too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from microfer.errors import MicroferError
from microfer.synth.coding_files import (  # noqa: F401  (re-exported: the writers lived here)
    CASME2_HEADER,
    CASME_SQ_CLASS4,
    FIXED_TIME,
    SAMM_HEADER,
    SAMM_HEADER_ROW,
    SAMM_OBJECTIVE,
    SAMM_PREAMBLE,
    SMIC_HS_HEADER,
    SMIC_VIS_HEADER,
    WRITERS,
    CodedEvent,
    au_cell,
    save_workbook,
    sheet_with_header,
    text_cell,
    write_casme2_coding,
    write_casme_sq_coding,
    write_samm_coding,
    write_smic_coding,
)


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
