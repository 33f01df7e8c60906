"""`microfer live`: spot (and recognise) expressions in a camera, a stream or a file as it plays."""

from __future__ import annotations

import json
from pathlib import Path

import click

from microfer.cli import finish


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
@click.option(
    "--fps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="frame rate, when the source does not say (or says wrong)",
)
@click.option(
    "--window",
    "window_s",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="seconds of video each spotting pass looks at",
)
@click.option(
    "--hop",
    "hop_s",
    type=click.FloatRange(min=0, min_open=True),
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
    from microfer.errors import MicroferError
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
    for iv, reason in spotter.failures:
        click.echo(f"warning: micro interval at apex {iv.apex} not recognised: {reason}", err=True)
    finish(len(spotter.failures), "micro interval(s) could not be recognised (listed above)")
