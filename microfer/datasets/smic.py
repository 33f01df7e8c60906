"""SMIC (HS 100 fps, VIS and NIR 25 fps) -> manifest, from either of two sources.

(a) the SMIC-E annotation `SMIC-HS-E_annotation*.xlsx`: one sheet per camera (HS, VIS),
    columns Subject, Filename, OnsetF, OffsetF, Onset2F, Offset2F, Emotion; frame numbers
    are absolute (the number in `image17581039.bmp`); there is NO apex column.
(b) no coding file (the original SMIC release): the clip folders
    `<root>/HS/<subject>/micro/<negative|positive|surprise>/<clip>/` are scanned; emotion is
    the folder name, onset/offset the first/last frame number found in the folder.

Rules applied (see `_coding`):
- header found by its names (H); formulas (OffsetF is `=D2+K2-1` in HS) read as the cached
  values (F);
- Subject 20 / '20' / 's20' / 's020' -> canonical `s20`; clip names lose subject padding
  (`s01_ne_02` -> `s1_ne_02`) (S);
- apex is always null with the note "apex not annotated": it is spotted later (A1);
- a second interval (Onset2F/Offset2F, 5 clips in HS and VIS): the first interval is kept,
  the second is named in the notes;
- the clip folder comes from the emotion code in the clip name (ne/po/sur), which is how
  the release names its folders; where the Emotion cell disagrees (s18_sur_03 says
  'negative') the emotion stays as written and a note says so;
- onset > offset or missing onset/offset -> dropped and listed (D);
- label: the class under the 3-class protocols (negative, positive, surprise).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from microfer.datasets._coding import (
    RowCollector,
    frame_number,
    norm_text,
    read_table,
    subject_number,
)
from microfer.datasets._coding import canonical_subject as format_subject
from microfer.errors import AnnotationError, LayoutError

CLASSES = ("negative", "positive", "surprise")
CODE_TO_EMOTION = {"ne": "negative", "po": "positive", "sur": "surprise"}
REQUIRED = ("Subject", "Filename", "OnsetF", "OffsetF", "Emotion")
OPTIONAL = ("Onset2F", "Offset2F")
IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".png")
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class Camera:
    name: str  # registry name
    folder: str  # HS | VIS | NIR (also the SMIC-E sheet name)
    fps: float
    default_protocol: Optional[str]


CAMERAS = {
    "smic_hs": Camera("smic_hs", "HS", 100.0, "smic-hs-3class"),
    "smic_vis": Camera("smic_vis", "VIS", 25.0, "smic-vis-3class"),
    # NIR has no sheet in SMIC-E and no manifest is shipped: read it from its folders.
    "smic_nir": Camera("smic_nir", "NIR", 25.0, None),
}


def layout(camera: Camera) -> str:
    return f"""\
SMIC {camera.folder} ({camera.fps:g} fps image sequences), dataset root = the folder holding {camera.folder}/:
  <root>/{camera.folder}/s1/micro/negative/s1_ne_01/image<N>.bmp   (also positive/, surprise/)
  frame_template: {camera.folder}/s1/micro/negative/s1_ne_01/image{{frame}}.bmp
Coding file (optional): SMIC-HS-E_annotation*.xlsx, sheet {camera.folder}, columns Subject, Filename,
  OnsetF, OffsetF[, Onset2F, Offset2F], Emotion (absolute frame numbers, no apex).
  Without a coding file the clip folders under <root>/{camera.folder}/ are scanned: emotion = folder,
  onset/offset = first/last frame number in the clip folder. Apex is spotted later."""


def canonical_subject(value) -> str:
    return format_subject("smic", value)


def canonical_clip(name: str) -> str:
    """`s01_ne_02` -> `s1_ne_02` (the release's clip names carry unpadded subjects)."""
    return re.sub(r"^[sS]0*(\d+)_", r"s\1_", name.strip())


def folder_emotion(clip: str) -> Optional[str]:
    """negative/positive/surprise from the emotion code in a clip name (`s1_ne_01`), or None."""
    m = re.match(r"^s\d+_([a-z]+)_", clip)
    return CODE_TO_EMOTION.get(m.group(1)) if m else None


def frame_template(camera: Camera, subject: str, clip: str, emotion_folder: str) -> str:
    return f"{camera.folder}/{subject}/micro/{emotion_folder}/{clip}/image{{frame}}.bmp"


def label_for(emotion: str) -> str:
    key = emotion.strip().lower()
    return key if key in CLASSES else ""


def read(camera: Camera, coding: Optional[Path], root: Optional[Path] = None) -> pd.DataFrame:
    if coding is not None:
        return _read_annotation(camera, Path(coding))
    if root is None:
        raise LayoutError(
            f"{camera.name}: give the SMIC-E annotation file or the dataset root "
            f"holding {camera.folder}/<subject>/micro/<emotion>/<clip>/"
        )
    return _scan_folders(camera, Path(root))


def _read_annotation(camera: Camera, coding: Path) -> pd.DataFrame:
    if camera.folder == "NIR":
        what = "SMIC-E annotation (NIR sheet; SMIC-E annotates HS and VIS only, read NIR from its folders with --root)"
    else:
        what = f"SMIC-E annotation ({camera.folder} sheet)"
    table = read_table(coding, REQUIRED, optional=OPTIONAL, sheet=camera.folder, what=what)
    rows = RowCollector(camera.name, str(coding))
    for rec in table.to_dict("records"):
        try:
            subject = canonical_subject(rec["Subject"])
        except AnnotationError as exc:
            raise AnnotationError(
                f"{coding} sheet {camera.folder} row {rec['_row']}: {exc}"
            ) from None
        clip = canonical_clip(norm_text(rec["Filename"]))
        emotion = norm_text(rec["Emotion"])
        folder = folder_emotion(clip)
        notes = []
        if folder is None:
            folder = emotion.lower()
        elif folder != emotion.lower():
            notes.append(f"clip name says {folder}, Emotion says {emotion}: frames under {folder}/")
        on2, off2 = frame_number(rec.get("Onset2F")), frame_number(rec.get("Offset2F"))
        if on2 is not None or off2 is not None:
            notes.append(f"second interval {on2}-{off2} not used")
        rows.add(
            subject=subject,
            clip=clip,
            onset=rec["OnsetF"],
            apex=None,
            offset=rec["OffsetF"],
            emotion=emotion,
            label=label_for(emotion),
            frame_template=frame_template(camera, subject, clip, folder),
            fps=camera.fps,
            notes=notes,
        )
    return rows.frame()


def _frame_files(folder: Path) -> list[tuple[int, str, str]]:
    """(number, prefix, suffix) of the numbered image files in a clip folder."""
    found = []
    for f in folder.iterdir():
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
            m = _NUMBERED.match(f.stem)
            if m:
                found.append((int(m.group(2)), m.group(1), f.suffix))
    return sorted(found)


def _scan_folders(camera: Camera, root: Path) -> pd.DataFrame:
    base = root / camera.folder
    if not base.is_dir():
        raise LayoutError(
            f"{camera.name}: {base} is not a folder; expected "
            f"{camera.folder}/<subject>/micro/<negative|positive|surprise>/<clip>/ under {root}"
        )
    rows = RowCollector(camera.name, str(base))
    subjects = [d for d in base.iterdir() if d.is_dir() and re.fullmatch(r"[sS]\d+", d.name)]
    for subject_dir in sorted(subjects, key=lambda d: subject_number(d.name)):
        subject = canonical_subject(subject_dir.name)
        for emotion in CLASSES:
            emotion_dir = subject_dir / "micro" / emotion
            if not emotion_dir.is_dir():
                continue
            for clip_dir in sorted(d for d in emotion_dir.iterdir() if d.is_dir()):
                clip = canonical_clip(clip_dir.name)
                frames = _frame_files(clip_dir)
                if not frames:
                    rows.drop(f"{subject}/{clip}", f"no numbered image frames in {clip_dir}")
                    continue
                prefixes = {(p, s) for _, p, s in frames}
                prefix, suffix = sorted(prefixes)[0]
                numbers = [n for n, p, s in frames if (p, s) == (prefix, suffix)]
                rel = clip_dir.relative_to(root).as_posix()
                notes = ["onset/offset = first/last frame in the clip folder"]
                if len(prefixes) > 1:
                    notes.append(f"several frame name patterns, using {prefix}<N>{suffix}")
                rows.add(
                    subject=subject,
                    clip=clip,
                    onset=numbers[0],
                    apex=None,
                    offset=numbers[-1],
                    emotion=emotion,
                    label=label_for(emotion),
                    frame_template=f"{rel}/{prefix}{{frame}}{suffix}",
                    fps=camera.fps,
                    notes=notes,
                )
    if not rows.rows and not rows.dropped:
        raise LayoutError(
            f"{camera.name}: no clip folders under {base} "
            f"(expected <subject>/micro/<negative|positive|surprise>/<clip>/)"
        )
    return rows.frame()
