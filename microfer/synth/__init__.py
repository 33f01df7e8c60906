"""Synthetic micro-expression clips made from real faces, in each dataset's real layout.

    from microfer.synth import generate
    s = generate("casme2", Path("/tmp/casme2"), subjects=4, clips_per_subject=6, seed=7)
    s.coding_file   # CASME2-coding-synth.xlsx, read like the official coding file
    s.truth_file    # synth_truth.csv: the exact onset/apex/offset, amplitude, identity

Modules: faces (identities from photos), motion (landmark-driven warps over time),
layouts (names, numbering and coding-file formats), generate (the driver).
"""

from microfer.synth.faces import Identity, default_faces_dir, load_identities, usable_photos
from microfer.synth.generate import (
    AMPLITUDES,
    MARKER,
    TRUTH_COLUMNS,
    TRUTH_NAME,
    SynthSet,
    generate,
    generate_composite,
    plan_layout,
)
from microfer.synth.layouts import LAYOUTS, LayoutSpec
from microfer.synth.motion import (
    Camera,
    Event,
    Pattern,
    RenderedClip,
    draw_pattern,
    make_clip_frames,
    render_clip,
    time_profile,
)

__all__ = [
    "AMPLITUDES",
    "Camera",
    "Event",
    "Identity",
    "LAYOUTS",
    "LayoutSpec",
    "MARKER",
    "Pattern",
    "RenderedClip",
    "SynthSet",
    "TRUTH_COLUMNS",
    "TRUTH_NAME",
    "default_faces_dir",
    "draw_pattern",
    "generate",
    "generate_composite",
    "load_identities",
    "make_clip_frames",
    "plan_layout",
    "render_clip",
    "time_profile",
    "usable_photos",
]
