"""`microfer spot` (long video -> intervals), `microfer spot-eval` (MEGC spotting, LOSO) and
`microfer live` (spotting while frames arrive)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from microfer.cli import finish
from microfer.cli.options import finite_option, fps_option
from microfer.errors import MicroferError
from microfer.spotting.spot_report import plot_signal


def _default_plot(video: Path) -> Path:
    return Path(f"{video.name.rstrip('/') or 'video'}_spot.png")


@click.command("spot")
@click.argument("video", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--model",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="bundle from `microfer train`: recognise each micro interval (spot-then-recognise)",
)
@fps_option("frame rate (a frame folder has none; default for a video: its container's)")
@click.option(
    "--threshold",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="peak height in noise units (default: PeakSettings.threshold; spot-eval reports "
    "the thresholds its folds chose)",
)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option("--csv", "as_csv", is_flag=True, help="print the intervals as CSV")
@click.option(
    "--plot",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="where to write the signal plot (default: <video name>_spot.png in the current folder)",
)
@click.option("--quiet", is_flag=True, help="no progress bar")
def spot_cmd(video, model, fps, threshold, as_json, as_csv, plot, quiet):
    """Spot micro- and macro-expressions in a long VIDEO (file or frame folder): intervals with
    onset, apex, offset, type (micro <= 0.5 s) and score; frames where the face was lost are
    listed and never hold an interval."""
    from dataclasses import replace

    from microfer.clip.video import frame_ranges
    from microfer.spotting.spot import PeakSettings, spot_curves, spot_video

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    peaks = PeakSettings() if threshold is None else replace(PeakSettings(), threshold=threshold)
    predictor = None
    if model is not None:  # a bundle that cannot recognise is refused before the long spotting
        from microfer.recognise.predict import Predictor

        predictor = Predictor(model)
    result = spot_video(video, fps=fps, peaks=peaks, progress=not quiet)
    if result.n_frames and not result.signal.face.any():
        raise MicroferError(
            f"{video}: no face found in any of its {result.n_frames} frames; nothing to spot "
            "(is the face in view, lit, and at least ~80 px wide?)"
        )
    failed = 0
    if predictor is not None:
        failed = _recognise(result, video, predictor)
    plot = plot or _default_plot(video)
    curve = spot_curves(result.signal, peaks.smooth_s)[0]
    plot_signal(
        result.signal.numbers,
        curve,
        plot,
        f"{video} ({result.fps:g} fps)",
        spotted=result.intervals,
        lost=result.lost,
        threshold=peaks.threshold,
    )
    doc = result.to_dict()
    doc["plot"] = str(plot)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    elif as_csv:
        fields = ["onset", "apex", "offset", "type", "score", "emotion"]
        click.echo(",".join(fields))
        for iv in result.intervals:
            d = iv.to_dict()
            click.echo(",".join(str(d[f]) for f in fields))
    else:
        _show_intervals(result, video, plot)
    if result.lost:
        numbers = [n for a, b in result.lost for n in range(a, b + 1)]
        click.echo(f"face lost in frames {frame_ranges(numbers)} (no interval there)", err=True)
    finish(
        failed,
        f"of {sum(iv.type == 'micro' for iv in result.intervals)} micro intervals could not be "
        "recognised (listed above)",
    )


def _show_intervals(result, video: Path, plot: Path) -> None:
    from collections import Counter

    click.echo(
        f"{video}: {result.n_frames} frames at {result.fps:g} fps, {len(result.intervals)} interval(s)"
    )
    for iv in result.intervals:
        label = f"  {iv.emotion}" if iv.emotion else ""
        click.echo(
            f"  {iv.type:5s} onset {iv.onset:6d}  apex {iv.apex:6d}  offset {iv.offset:6d}  "
            f"score {iv.score:6.1f}{label}"
        )
    if result.rejected:
        why = Counter(reason for _, reason in result.rejected)
        click.echo(
            f"  not expressions: {len(result.rejected)} peak(s) ("
            + ", ".join(f"{r} {n}" for r, n in sorted(why.items()))
            + ")"
        )
    click.echo(f"plot: {plot}")


def _recognise(result, video: Path, predictor) -> int:
    """Label each micro interval with the bundle's classifier; returns how many failed."""
    from microfer.clip.video import open_frames
    from microfer.spotting.spot import recognise_micro

    failed = recognise_micro(result.intervals, open_frames(video), predictor)
    for iv, reason in failed:
        click.echo(f"{video} frames {iv.onset}-{iv.offset}: not recognised: {reason}", err=True)
    return len(failed)


@click.command("spot-eval")
@click.option(
    "--protocol", type=click.Choice(["casme_sq-spotting", "samm-lv-spotting"]), required=True
)
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="dataset root (CAS(ME)^2: the folder holding rawpic/; SAMM-LV: the one holding SAMM_longvideos/)",
)
@click.option(
    "--coding",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="coding file (default: the one in --root)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="run folder: results.json, report.md, signal plots; signals/ caches each video's signal",
)
@click.option(
    "--plots", type=click.IntRange(min=0), default=4, show_default=True, help="videos to plot"
)
@click.option(
    "--model",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="bundle from `microfer train`: recognise the true-positive micro intervals and report STRS",
)
@click.option("--quiet", is_flag=True, help="no progress bar")
def spot_eval_cmd(protocol, root, coding, out, plots, model, quiet):
    """MEGC spotting evaluation (IoU >= 0.5; P, R, F1 overall and per type), leave-one-subject-out
    with every threshold chosen on the training subjects: `scored` (the rules, then a peak
    scorer trained in-fold) and `spot` (the rules alone), beside two trivial baselines."""
    from microfer.spotting.spot_eval import run_spot_eval

    doc = run_spot_eval(
        protocol, root, out, coding=coding, progress=not quiet, plots=plots, model=model
    )
    for method, scores in doc["metrics"].items():
        click.echo(
            f"{method:20s} F1 overall {scores['overall']['f1']:.3f}  micro {scores['micro']['f1']:.3f}  "
            f"macro {scores['macro']['f1']:.3f}"
        )
    if "strs" in doc:
        click.echo(
            f"STRS {doc['strs']['strs']:.3f} (spotting F1 x recognition UF1 {doc['strs']['uf1']:.3f} on "
            f"{doc['strs']['n']} true-positive micro intervals)"
        )
    click.echo(f"wrote {out / 'results.json'}, {out / 'report.md'}")
    for f in doc["failures"]:
        click.echo(f"{f['video']}: {f['reason']}", err=True)
    finish(
        len(doc["failures"]),
        f"of {doc['n_videos'] + len(doc['failures'])} videos could not be read",
    )


@click.command("live")
@click.option(
    "--camera", type=click.IntRange(min=0), default=None, help="camera index (0 = the first)"
)
@click.option("--url", default=None, help="stream URL OpenCV can open (rtsp://, http://...)")
@click.option(
    "--video",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="a video file, played as a stream",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="bundle from `microfer train`: recognise each spotted micro-expression",
)
@fps_option("frame rate, when the source does not say (or says wrong)")
@finite_option(
    "--window",
    "window_s",
    low=0.5,
    high=60.0,
    default=4.0,
    show_default=True,
    help="seconds of video each spotting pass looks at",
)
@finite_option(
    "--hop",
    "hop_s",
    low=0.04,
    high=60.0,
    default=1.0,
    show_default=True,
    help="seconds between spotting passes (an event is reported about (window - hop) / 2 s after its apex)",
)
@click.option(
    "--realtime",
    is_flag=True,
    help="play a --video file at its frame rate, dropping frames the spotter cannot keep up with, as a "
    "camera would (default: as fast as it can be read)",
)
@click.option(
    "--max-frames", type=click.IntRange(min=1), default=None, help="stop after this many frames"
)
@click.option(
    "--json", "as_json", is_flag=True, help="one JSON object per event, then one for the summary"
)
def live_cmd(camera, url, video, model, fps, window_s, hop_s, realtime, max_frames, as_json):
    """Spot micro- and macro-expressions while the frames arrive; each event is printed as it
    is found, with the frame rate achieved. Stop a camera or stream with Ctrl+C."""
    from microfer.spotting.live import LiveSettings, LiveSpotter, open_stream, run_live

    cap, source_fps = open_stream(camera=camera, url=url, video=video)
    rate = fps or source_fps
    if not rate or rate <= 0:
        cap.release()
        raise MicroferError(
            f"{video or url or f'camera {camera}'}: the source gives no frame rate; pass --fps"
        )
    predictor = None
    if model is not None:
        from microfer.recognise.predict import Predictor

        predictor = Predictor(model)
    spotter = LiveSpotter(rate, LiveSettings(window_s=window_s, hop_s=hop_s), predictor=predictor)

    def show(event):
        if as_json:
            click.echo(json.dumps(event.to_dict()))
            return
        iv = event.interval
        label = f"  {iv.emotion}" if iv.emotion else ""
        if iv.emotion and iv.probabilities:
            label += f" (p {iv.probabilities[iv.emotion]:.2f})"
        click.echo(
            f"[frame {event.reported_at_frame:6d}, {event.reported_at_frame / rate:7.1f} s] {iv.type:5s} "
            f"onset {iv.onset} apex {iv.apex} offset {iv.offset}  score {iv.score:.1f}{label}   "
            f"({event.fps:.0f} frames/s)"
        )

    try:
        summary = run_live(cap, rate, spotter, show, realtime=realtime, max_frames=max_frames)
    except KeyboardInterrupt:
        return
    summary["source_fps"] = rate
    if as_json:
        click.echo(json.dumps({"summary": summary}))
    else:
        click.echo(
            f"{summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.0f} frames/s, "
            f"the source runs at {rate:g}); {summary['events']} event(s)"
            + (f"; {summary['dropped']} frames dropped to keep up" if summary["dropped"] else "")
        )
    if not summary["face_found"] and summary["frames"]:
        click.echo(
            f"warning: no face was found in any of the {summary['frames']} frames, so nothing "
            "could be spotted (is the face in view, lit, and at least ~80 px wide?)",
            err=True,
        )
    for iv, reason in spotter.failures:
        click.echo(f"warning: micro interval at apex {iv.apex} not recognised: {reason}", err=True)
    finish(len(spotter.failures), "micro interval(s) could not be recognised (listed above)")
