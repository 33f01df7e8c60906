"""Long-video interval tables: the manifest of CAS(ME)^2 or SAMM-LV -> one row per interval.

Both adapters write one manifest row per annotated interval with `type=macro|micro` in the
notes and the long video in `frame_template`; spotting needs them grouped by video:

    intervals = interval_table(datasets.get("samm_lv").read(coding))
    intervals.columns -> subject, video, clip, onset, apex, offset, type, emotion, label, fps, frame_dir

`video` is the frame folder relative to the dataset root (`rawpic/s15/15_0401girlcrashing`,
`SAMM_longvideos/006_1`), `frame_dir` the same (kept apart so that a video-file layout can
differ later).
"""

from __future__ import annotations

import posixpath

import pandas as pd

from microfer.datasets.casme_sq import expression_type
from microfer.errors import AnnotationError

INTERVAL_COLUMNS = [
    "subject",
    "video",
    "clip",
    "onset",
    "apex",
    "offset",
    "type",
    "emotion",
    "label",
    "fps",
    "frame_dir",
]


def interval_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per interval, sorted by (subject, video, onset); AnnotationError when a row has no type."""
    kinds = expression_type(manifest)
    if len(manifest) and (kinds == "").any():
        first = manifest[kinds == ""].iloc[0]
        raise AnnotationError(
            f"{manifest.attrs.get('source', 'manifest')}: interval {first['subject']}/"
            f"{first['clip']} has no type=macro|micro note (not a long-video manifest?)"
        )
    frame_dir = manifest["frame_template"].map(posixpath.dirname)
    out = pd.DataFrame(
        {
            "subject": manifest["subject"],
            "video": frame_dir,
            "clip": manifest["clip"],
            "onset": manifest["onset"].astype(int),
            "apex": manifest["apex"],
            "offset": manifest["offset"].astype(int),
            "type": kinds,
            "emotion": manifest["emotion"],
            "label": manifest["label"],
            "fps": manifest["fps"].astype(float),
            "frame_dir": frame_dir,
        },
        columns=INTERVAL_COLUMNS,
    )
    return out.sort_values(["subject", "video", "onset"], kind="stable").reset_index(drop=True)
