"""Small typed records passed between the stages of the pipeline.

Stages exchange plain numpy arrays and these dataclasses; tables of many samples are
pandas DataFrames whose columns are `MANIFEST_COLUMNS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# The common manifest schema every dataset adapter produces (one row per sample).
MANIFEST_COLUMNS = [
    "dataset",  # registry name: casme2, samm, smic_hs, smic_vis, smic_nir, casme_sq, ...
    "subject",  # canonical subject id of that dataset: sub01, 006, s1, s15
    "clip",  # clip id as the dataset names it: EP02_01f, 006_1_2, s1_ne_01
    "onset",  # absolute frame number (the number in the frame file name)
    "apex",  # absolute frame number, or empty when not annotated (spotted later)
    "offset",  # absolute frame number
    "emotion",  # emotion as written in the coding file
    "label",  # class under the dataset's default protocol (empty = excluded there)
    "frame_template",  # path relative to the dataset root, "{frame}" = the frame number
    "fps",
    "notes",  # what the adapter repaired or noticed, ';'-separated
]


def is_missing(value) -> bool:
    """True for None, NaN, pandas NA and blank strings (empty manifest cells)."""
    if isinstance(value, str):
        return not value.strip()
    if value is None:
        return True
    try:  # NaN and NaT are the values unequal to themselves; pandas does not need importing
        return bool(value != value)
    except TypeError:  # pandas.NA refuses a truth value: it is the missing value
        return True


@dataclass(frozen=True)
class Sample:
    """One annotated micro- (or macro-) expression clip."""

    dataset: str
    subject: str
    clip: str
    onset: int
    apex: Optional[int]
    offset: int
    emotion: str
    label: str
    frame_template: str
    fps: float
    notes: str = ""

    @property
    def key(self) -> str:
        """Unique id of the sample across datasets (used for caches and folds)."""
        return f"{self.dataset}/{self.subject}/{self.clip}"

    @classmethod
    def from_row(cls, row) -> "Sample":
        """From a manifest row (dict or pandas Series); empty/NA apex becomes None."""
        missing = is_missing
        text = lambda v: "" if missing(v) else str(v)  # noqa: E731
        return cls(
            dataset=str(row["dataset"]),
            subject=str(row["subject"]),
            clip=str(row["clip"]),
            onset=int(row["onset"]),
            apex=None if missing(row["apex"]) else int(row["apex"]),
            offset=int(row["offset"]),
            emotion=text(row["emotion"]),
            label=text(row["label"]),
            frame_template=str(row["frame_template"]),
            fps=float(row["fps"]),
            notes=text(row.get("notes", "")),
        )


@dataclass
class FaceLandmarks:
    """A detected face: bounding box (x0, y0, x1, y1) and 68 dlib landmarks (x, y)."""

    box: tuple[int, int, int, int]
    points: np.ndarray  # (68, 2) float32, image coordinates
    n_faces: int = 1  # how many faces the detector saw (the largest is kept)


@dataclass
class PreparedClip:
    """Everything `prepare` derives from one clip, in the aligned face frame."""

    onset: int  # absolute frame numbers used
    apex: int
    offset: int
    apex_source: str  # "annotated" | "spotted" | "derived_inputs" (read, not computed)
    onset_face: np.ndarray  # (S, S, 3) uint8 BGR aligned crop of the onset frame
    apex_face: np.ndarray  # (S, S, 3) uint8 BGR aligned crop of the apex frame
    flow: np.ndarray  # (S, S, 2) float32 onset->apex optical flow (u, v), in `flow_units`
    strain: np.ndarray  # (S, S) float32 optical strain magnitude
    landmarks: np.ndarray  # (68, 2) float32 on the onset frame, image coordinates
    transform: np.ndarray  # (2, 3) float32 similarity, image -> aligned face
    face_box: tuple[int, int, int, int]
    motion_curve: np.ndarray = field(
        default_factory=lambda: np.zeros(0, np.float32)
    )  # per frame onset..offset
    notes: str = ""
    # what a flow value means: "pixels" (computed here), or "minmax_per_image" (circulated
    # derived inputs: each channel min-max scaled to 0..1 per image, the pixel scale is lost)
    flow_units: str = "pixels"
    # frames left out of apex spotting because the face was not found in them (this run
    # only: not cached; the notes say it too)
    no_face_frames: tuple = ()


@dataclass
class ClipFailure:
    """A clip that could not be used, and why (collected, never raised through a dataset run)."""

    key: str
    stage: str  # layout | frames | face | apex | motion
    reason: str
