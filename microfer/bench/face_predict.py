"""`microfer predict FACE.jpg` with no --model (the shipped image model) as a new process:
median wall seconds and peak resident memory, against the goals of <= 1 s and <= 300 MB.

A new process each run because that is what a user pays: interpreter start, imports (the
teacher runs in numpy, so torch must stay out), dlib's models and the image model's load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from microfer.bench.predict_timing import time_shell_command
from microfer.bench.suite import format_goals, goal_entry, machine_info
from microfer.errors import MicroferError

# a public-domain portrait shipped with the package (assets/faces/SOURCES.md)
DEFAULT_FACE = Path(__file__).resolve().parents[1] / "assets" / "faces" / "grace_hopper.jpg"
GOAL_FACE_SHELL_S = 1.0
GOAL_FACE_SHELL_MB = 300.0


def bench_face(image: Optional[Path] = None, runs: int = 5) -> dict:
    """Time `microfer predict IMAGE --json` `runs` times, each a fresh process (median wall,
    largest peak memory), with the label and probabilities it answered."""
    if runs < 1:
        raise MicroferError(f"bench face needs runs >= 1 (got {runs})")
    image = Path(image) if image else DEFAULT_FACE
    if not image.is_file():
        raise MicroferError(f"{image}: face image not found")
    shell = time_shell_command(["predict", str(image), "--json"], runs)
    doc = shell.pop("output")
    shell.update(
        label=doc.get("label"), probabilities=doc.get("probabilities"), model=doc.get("model")
    )
    return {
        "image": str(image),
        "shell": shell,
        "goals": {
            "face_shell_s": goal_entry(
                "`microfer predict FACE.jpg` (no --model) from the shell (wall)",
                shell["median_s"],
                GOAL_FACE_SHELL_S,
                "s",
            ),
            "face_shell_mb": goal_entry(
                "`microfer predict FACE.jpg` from the shell, peak memory",
                shell["peak_mb"],
                GOAL_FACE_SHELL_MB,
                "MB",
            ),
        },
        "machine": machine_info(),
    }


def format_face(result: dict) -> str:
    sh = result["shell"]
    return "\n".join(
        [
            f"`microfer predict {Path(result['image']).name}` (shipped image model) from the shell, "
            f"{sh['runs']} runs: median {sh['median_s']:.2f} s wall "
            f"(runs {', '.join(f'{w:.2f}' for w in sh['runs_s'])}), {sh['cpu_median_s']:.2f} s CPU "
            f"(user + system), peak {sh['peak_mb']:.0f} MB; "
            f"answered {sh['label']}; load average {result['machine'].get('load_average')}",
            "",
            format_goals(result["goals"]),
        ]
    )
