"""Named boxes of the aligned face, the one table both apex spotting and long-video
spotting read their regions from.

Boxes are (x0, y0, x1, y1) as fractions of the aligned crop (see
`microfer.clip.face.CANONICAL_POINTS`: eye centres at y 0.32, brows ~0.19, mouth corners
at y 0.70).
"""

from __future__ import annotations

from types import MappingProxyType

BOXES = MappingProxyType(
    {
        # apex spotting in a short clip: brows and eyes of each side, the nose (AU9
        # wrinkles), the mouth and its corners
        "left_brow_eye": (0.16, 0.10, 0.48, 0.42),
        "right_brow_eye": (0.52, 0.10, 0.84, 0.42),
        "nose_wrinkle": (0.38, 0.36, 0.62, 0.58),
        "mouth": (0.24, 0.58, 0.76, 0.84),
        # long-video spotting: the eye band (y 0.25-0.38) is left out of the brows, since
        # blinks and eye movements are the commonest false alarms there
        "left_brow": (0.12, 0.05, 0.48, 0.25),
        "right_brow": (0.52, 0.05, 0.88, 0.25),
        "nose": (0.38, 0.38, 0.62, 0.58),
        "mouth_left": (0.22, 0.58, 0.50, 0.86),
        "mouth_right": (0.50, 0.58, 0.78, 0.86),
        # measured to recognise blinks, never spotted from
        "eyes": (0.16, 0.25, 0.84, 0.40),
    }
)

APEX_REGIONS = ("left_brow_eye", "right_brow_eye", "nose_wrinkle", "mouth")
SPOT_REGIONS = ("left_brow", "right_brow", "nose", "mouth_left", "mouth_right", "eyes")


def boxes(names) -> dict[str, tuple[float, float, float, float]]:
    """The boxes of `names`, in that order."""
    return {n: BOXES[n] for n in names}
