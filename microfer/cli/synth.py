"""`microfer synth`: synthetic micro-expression clips from real faces, in a real dataset layout."""

from __future__ import annotations

import time
from pathlib import Path

import click

LAYOUT_CHOICES = ["casme2", "samm", "smic", "casme_sq", "samm_lv", "video", "composite"]


def _frames_range(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        lo, _, hi = value.partition("-")
        rng = (int(lo), int(hi or lo))
    except ValueError:
        raise click.BadParameter(f"expected MIN-MAX frames, e.g. 24-40, got {value!r}") from None
    return rng


@click.command("synth")
@click.option(
    "--layout",
    type=click.Choice(LAYOUT_CHOICES),
    required=True,
    help="dataset layout to write (composite = casme2 + samm + smic for the MEGC2019 3 classes)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="output folder (empty, new, or a previous synth output)",
)
@click.option(
    "--subjects",
    type=click.IntRange(1, 200),
    default=4,
    show_default=True,
    help="subjects (per dataset for composite)",
)
@click.option(
    "--clips-per-subject",
    type=click.IntRange(1, 50),
    default=6,
    show_default=True,
    help="clips per subject (casme_sq: intervals, two per video)",
)
@click.option("--seed", type=int, default=0, show_default=True, help="same seed, same files")
@click.option(
    "--faces",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="folder of face photos (searched recursively) instead of the shipped faces",
)
@click.option(
    "--amplitude",
    default="micro",
    show_default=True,
    help="micro (1.5-3 px at apex), macro (6-10 px) or a number of pixels",
)
@click.option(
    "--apex-unknown",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="fraction of clips whose apex the coding file leaves unannotated ('/' or -1)",
)
@click.option(
    "--frames",
    "clip_frames",
    callback=_frames_range,
    help="frames per clip, MIN-MAX, neutral frames around onset/offset included "
    "(default 24-40; smic 16-26, its camera runs at 100 fps; casme_sq: not used)",
)
@click.option(
    "--emotion",
    "emotions",
    multiple=True,
    help="emotions to cycle through (repeatable; default: the layout's classes)",
)
@click.option(
    "--force",
    is_flag=True,
    help="write into a non-empty folder that is not a synth output (nothing there is deleted)",
)
@click.option(
    "--long-videos",
    is_flag=True,
    help="casme_sq: long videos for spotting (several macro and micro intervals among blinks, head "
    "moves and talking; --clips-per-subject = intervals per video); samm_lv always writes these",
)
@click.option(
    "--videos-per-subject",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="long videos: videos per subject",
)
@click.option(
    "--face-leaves",
    is_flag=True,
    help="long videos: the head moves out of the frame once and comes back",
)
@click.option(
    "--background-video",
    "background_videos",
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="long videos: inject the intervals into this REAL face video (repeatable: one per "
    "subject in turn) instead of rendering faces; its frame rate must be the layout's",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="--background-video: length of each long video; a shorter background is played "
    "forward then backward (ping-pong) to reach it (default: the background's own length)",
)
@click.option(
    "--background-fps",
    type=click.FloatRange(min=0, min_open=True),
    help="--background-video: frame rate of a background given as a frame folder",
)
@click.option("--quiet", is_flag=True, help="no progress bar")
def synth_cmd(**o):
    """Write synthetic micro-expression clips made from real faces, with a coding file in
    the dataset's real format and synth_truth.csv (the exact onset/apex/offset per clip).

    Long videos for spotting (`--layout samm_lv`, or `--layout casme_sq --long-videos`) hold
    several macro and micro intervals at known frames; synth_nuisances.csv lists the blinks,
    head movements and talking between them.

    With `--background-video VIDEO` the long videos are the user's real face video (its blinks,
    head motion, speech and lighting kept) with micro and macro expressions injected along
    its own landmarks, at known frames."""
    start = time.perf_counter()
    if o["background_videos"]:
        _injected(o)
    elif o["seconds"] is not None or o["background_fps"] is not None:
        raise click.UsageError("--seconds and --background-fps go with --background-video")
    elif o["layout"] == "samm_lv" or o["long_videos"]:
        _long_videos(o)
    else:
        for s in _clips(o):
            click.echo(f"{s.layout}: {s.n_clips} clips in {s.root}")
            click.echo(
                f"  coding file: {s.coding_file if s.coding_file else '(none: video files only)'}"
            )
            click.echo(f"  ground truth: {s.truth_file}")
    click.echo(f"done in {time.perf_counter() - start:.1f} s")


def _refuse_clip_options(o: dict) -> None:
    """Long videos draw their own emotions, apexes, lengths and amplitudes."""
    if o["emotions"] or o["apex_unknown"] or o["clip_frames"] or o["amplitude"] != "micro":
        raise click.UsageError(
            "--emotion, --apex-unknown, --frames and --amplitude do not apply to long videos"
        )


def _long_videos(o: dict) -> None:
    from microfer.synth.long_videos import generate_long

    if o["layout"] not in ("casme_sq", "samm_lv"):
        raise click.UsageError(
            "--long-videos is for --layout casme_sq (samm_lv always writes long videos)"
        )
    _refuse_clip_options(o)
    s = generate_long(
        o["layout"],
        o["out"],
        subjects=o["subjects"],
        videos_per_subject=o["videos_per_subject"],
        intervals=o["clips_per_subject"],
        seed=o["seed"],
        faces=o["faces"],
        progress=not o["quiet"],
        force=o["force"],
        face_leaves=o["face_leaves"],
    )
    n_videos = o["subjects"] * o["videos_per_subject"]
    click.echo(f"{s.layout}: {s.n_clips} intervals in {n_videos} long videos in {s.root}")
    click.echo(f"  coding file: {s.coding_file}")
    click.echo(f"  ground truth: {s.truth_file} (nuisances: {s.root / 'synth_nuisances.csv'})")


def _injected(o: dict) -> None:
    from microfer.synth.inject import generate_injected

    if o["layout"] not in ("casme_sq", "samm_lv"):
        raise click.UsageError(
            "--background-video writes long videos: --layout casme_sq or samm_lv"
        )
    if o["faces"] or o["face_leaves"] or o["videos_per_subject"] != 1:
        raise click.UsageError(
            "--faces, --face-leaves and --videos-per-subject do not apply to --background-video "
            "(the background is the face; one video per subject)"
        )
    _refuse_clip_options(o)
    s = generate_injected(
        o["layout"],
        o["out"],
        list(o["background_videos"]),
        subjects=o["subjects"],
        intervals=o["clips_per_subject"],
        seed=o["seed"],
        seconds=o["seconds"],
        fps=o["background_fps"],
        progress=not o["quiet"],
        force=o["force"],
    )
    click.echo(
        f"{s.layout}: {s.n_clips} intervals injected into {o['subjects']} real-video long videos "
        f"in {s.root}"
    )
    click.echo(f"  coding file: {s.coding_file}")
    click.echo(
        f"  ground truth: {s.truth_file} (known nuisances: {s.root / 'synth_nuisances.csv'})"
    )


def _clips(o: dict) -> list:
    from microfer.synth import generate, generate_composite

    if o["videos_per_subject"] != 1 or o["face_leaves"]:
        raise click.UsageError("--videos-per-subject and --face-leaves are for long videos")
    common = dict(
        seed=o["seed"],
        faces=o["faces"],
        amplitude=o["amplitude"],
        progress=not o["quiet"],
        clip_frames=o["clip_frames"],
        force=o["force"],
    )
    if o["layout"] != "composite":
        return [
            generate(
                o["layout"],
                o["out"],
                subjects=o["subjects"],
                clips_per_subject=o["clips_per_subject"],
                emotions=list(o["emotions"]) or None,
                apex_unknown=o["apex_unknown"],
                **common,
            )
        ]
    if o["emotions"]:
        raise click.UsageError(
            "--emotion cannot be combined with --layout composite "
            "(its emotions are balanced over negative/positive/surprise)"
        )
    if o["apex_unknown"]:
        raise click.UsageError("--apex-unknown is not available with --layout composite")
    sets = generate_composite(
        o["out"],
        subjects_per_dataset=o["subjects"],
        clips_per_subject=o["clips_per_subject"],
        **common,
    )
    return list(sets.values())
