"""MEGC2019 composite (`combined_3class_gt.csv`) -> manifest, joined with the source manifests.

The official list is shipped as it is (442 rows: smic 164 / casme2 145 / samm 133; 68
subjects; 0 negative 250, 1 positive 109, 2 surprise 83) rather than re-derived from the
coding files, which does not reproduce it. Each row is renamed to this project's ids and
joined on (dataset, subject, clip) with the source manifests for onset / apex / offset /
emotion / frame_template / fps:
- dataset: smic -> smic_hs, casme2, samm;
- subject: `s01` -> `s1`, `6` -> `006`, `sub01` stays; clip: `s01_ne_02` -> `s1_ne_02`;
- label = the composite class name (negative / positive / surprise);
- a row absent from its source manifest (SMIC s01_ne_02 and s02_sur_05 are not in SMIC-E)
  keeps empty onset/apex/offset, emotion = the composite class, the frame_template its
  release folder would have, and a note; the clip folder then bounds the clip;
- where the composite class differs from the source emotion's own class (SMIC s18_sur_03:
  Emotion 'negative', composite surprise) the note says so; the label is the composite's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from microfer.datasets import casme2, samm, smic
from microfer.datasets._coding import manifest_frame, norm_text, read_sheets
from microfer.errors import AnnotationError

NAME = "megc2019_composite"
CLASSES = ("negative", "positive", "surprise")
DATASETS = {"smic": "smic_hs", "casme2": "casme2", "samm": "samm"}
COLUMNS = ("dataset", "subject", "filename", "label")


def _canonical(dataset: str, subject: str, clip: str) -> tuple[str, str]:
    if dataset == "casme2":
        return casme2.canonical_subject(subject), clip
    if dataset == "samm":
        return samm.canonical_subject(subject), clip
    return smic.canonical_subject(subject), smic.canonical_clip(clip)


def read_ground_truth(path: Path) -> pd.DataFrame:
    """The official list as (dataset, subject, clip, label) in this project's ids and class names."""
    path = Path(path)
    rows = next(iter(read_sheets(path, "MEGC2019 composite ground truth", COLUMNS).values()))
    rows = [r for r in rows if any(norm_text(c) for c in r)]
    if rows and norm_name_row(rows[0]) == list(COLUMNS):
        rows = rows[1:]
    out = []
    for i, r in enumerate(rows, start=1):
        cells = [norm_text(c) for c in r]
        if len(cells) != 4 or cells[0] not in DATASETS or cells[3] not in ("0", "1", "2"):
            raise AnnotationError(
                f"MEGC2019 composite file {path} row {i}: {r!r}; expected 4 header-less columns "
                f"{', '.join(COLUMNS)} with dataset in smic/casme2/samm and label 0/1/2"
            )
        dataset = DATASETS[cells[0]]
        try:
            subject, clip = _canonical(cells[0], cells[1], cells[2])
        except AnnotationError as exc:
            raise AnnotationError(f"MEGC2019 composite file {path} row {i}: {exc}") from None
        out.append(
            dict(
                dataset=dataset,
                subject=subject,
                clip=clip,
                label=CLASSES[int(cells[3])],
                composite_subject=cells[1],
                composite_clip=cells[2],
            )
        )
    return pd.DataFrame(out)


def norm_name_row(row) -> list[str]:
    return [norm_text(c).lower() for c in row]


def build(ground_truth: Path, sources: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The composite manifest: official rows joined with `sources` {dataset name: manifest}."""
    gt = read_ground_truth(ground_truth)
    index = {}
    for name, df in sources.items():
        for rec in df.to_dict("records"):
            index[(name, rec["subject"], rec["clip"])] = rec
    rows = []
    for g in gt.to_dict("records"):
        src = index.get((g["dataset"], g["subject"], g["clip"]))
        notes = []
        if src is None:
            notes.append(
                f"not in the {g['dataset']} annotation: onset/offset from the clip folder, apex spotted"
            )
            rows.append(
                dict(
                    dataset=g["dataset"],
                    subject=g["subject"],
                    clip=g["clip"],
                    onset=None,
                    apex=None,
                    offset=None,
                    emotion=g["label"],
                    label=g["label"],
                    frame_template=_template_without_source(g),
                    fps=_fps(g["dataset"]),
                    notes=";".join(notes),
                )
            )
            continue
        own = _own_class(g["dataset"], src["emotion"])
        if own != g["label"]:
            notes.append(f"composite class {g['label']} differs from emotion {src['emotion']!r}")
        src_notes = norm_text(src["notes"])
        rows.append(
            dict(
                dataset=g["dataset"],
                subject=g["subject"],
                clip=g["clip"],
                onset=src["onset"],
                apex=src["apex"],
                offset=src["offset"],
                emotion=src["emotion"],
                label=g["label"],
                frame_template=src["frame_template"],
                fps=src["fps"],
                notes=";".join(notes + ([src_notes] if src_notes else [])),
            )
        )
    return manifest_frame(rows)


_NEGATIVE = {"disgust", "repression", "anger", "contempt", "fear", "sadness", "negative"}


def _own_class(dataset: str, emotion: str) -> str:
    key = emotion.strip().lower()
    if key in _NEGATIVE:
        return "negative"
    if key in ("happiness", "positive"):
        return "positive"
    return "surprise" if key == "surprise" else ""


def _fps(dataset: str) -> float:
    return {"casme2": casme2.FPS, "samm": samm.FPS}.get(dataset, smic.CAMERAS["smic_hs"].fps)


def _template_without_source(g: Mapping) -> str:
    if g["dataset"] == "casme2":
        return casme2.frame_template(g["subject"], g["clip"])
    if g["dataset"] == "samm":
        return samm.frame_template(g["subject"], g["clip"])
    folder = smic.folder_emotion(g["clip"]) or g["label"]
    return smic.frame_template(smic.CAMERAS["smic_hs"], g["subject"], g["clip"], folder)
