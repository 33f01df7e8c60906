"""What a synth run says it wrote: the coding-file rows and synth_truth.csv of each recording.

synth_truth.csv keeps the exact frames of every expression, also where the coding file
hides the apex, with the identity and the seed that rendered it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from microfer.io import write_csv
from microfer.synth import layouts as L
from microfer.synth.faces import Identity
from microfer.synth.planning import RecordingPlan

TRUTH_NAME = "synth_truth.csv"
TRUTH_COLUMNS = [
    "dataset",
    "subject",
    "clip",
    "onset",
    "apex",
    "offset",
    "emotion",
    "class3",
    "amplitude_px",
    "identity",
    "seed",
    "type",
    "coded_apex",
    "first_frame",
    "last_frame",
    "frame_dir",
]


def recording_rows(
    plan: RecordingPlan, written: list[str], identity: Identity, layout: str, spec: L.LayoutSpec
) -> tuple[list[L.CodedEvent], list[dict]]:
    """The coding-file rows and the synth_truth.csv rows of one rendered recording."""
    apex_coded = layout not in ("smic", "video")  # SMIC-E has no apex column, videos no coding file
    last = plan.frame_number(plan.n_frames - 1)
    coded, truth = [], []
    for e in plan.events:
        onset, apex, offset = (
            plan.frame_number(e.onset),
            plan.frame_number(e.apex),
            plan.frame_number(e.offset),
        )
        coded.append(
            L.CodedEvent(
                plan.subject_code,
                e.clip,
                onset,
                apex if e.apex_known else None,
                offset,
                e.emotion,
                e.aus,
                plan.first_frame,
                last,
                e.kind,
                dict(plan.extra),
            )
        )
        truth.append(
            {
                "dataset": spec.dataset,
                "subject": plan.subject,
                "clip": e.clip,
                "onset": onset,
                "apex": apex,
                "offset": offset,
                "emotion": e.emotion,
                "class3": L.class3(layout, e.emotion),
                "amplitude_px": e.amplitude_px,
                "identity": identity.name,
                "seed": plan.seed,
                "type": e.kind,
                "coded_apex": apex if e.apex_known and apex_coded else "",
                "first_frame": plan.first_frame,
                "last_frame": last,
                "frame_dir": plan.folder if layout != "video" else written[-1],
            }
        )
    return coded, truth


def write_truth(out: Path, truth_rows: list[dict]) -> None:
    truth = pd.DataFrame(truth_rows, columns=TRUTH_COLUMNS).sort_values(
        ["subject", "clip", "onset"]
    )
    write_csv(out / TRUTH_NAME, truth)
