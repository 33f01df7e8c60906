"""`microfer live` on a synthetic long video played as a stream: events reported once, after
their apex, where the truth is; memory bounded by the window."""

from __future__ import annotations

import json

import cv2
import pandas as pd
import pytest
from click.testing import CliRunner

from microfer.spotting.spot_eval import iou
from microfer.synth.long_videos import generate_long


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """A CAS(ME)^2-layout long video written as one mp4 (a stream has no frame folder)."""
    out = tmp_path_factory.mktemp("live")
    synth = generate_long(
        "casme_sq", out, subjects=1, intervals=3, seed=11, progress=False, frame_size=(480, 360)
    )
    truth = pd.read_csv(synth.truth_file)
    folder = synth.root / truth.frame_dir.iloc[0]
    frames = sorted(folder.glob("img*.jpg"), key=lambda p: int(p.stem[3:]))
    video = out / "stream.mp4"
    first = cv2.imread(str(frames[0]))
    writer = cv2.VideoWriter(
        str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30, (first.shape[1], first.shape[0])
    )
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    # truth in 0-based stream indices (the folder numbers frames from 1)
    truth = truth.assign(onset=truth.onset - 1, apex=truth.apex - 1, offset=truth.offset - 1)
    return video, truth, len(frames)


def test_live_reports_each_expression_once_after_its_apex(stream):
    from microfer.spotting.live import LiveSettings, LiveSpotter, open_stream, run_live

    video, truth, n = stream
    cap, fps = open_stream(video=video)
    assert fps == pytest.approx(30, abs=0.5)
    spotter = LiveSpotter(fps, LiveSettings(window_s=4.0, hop_s=1.0))
    events, sizes = [], []
    summary = run_live(
        cap, fps, spotter, lambda e: (events.append(e), sizes.append(len(spotter.frames)))
    )
    assert summary["frames"] == n and summary["events"] == len(events) and summary["fps"] > 0
    assert max(sizes) <= spotter.window  # the window, never the stream, is in memory
    apexes = [e.interval.apex for e in events]
    assert len(apexes) == len(set(apexes)) and apexes == sorted(apexes)
    for e in events[:-1]:
        assert e.reported_at_frame >= e.interval.apex  # causal: reported once its apex was seen
    macro = truth[truth["type"] == "macro"]
    found = [
        any(iou((e.interval.onset, e.interval.offset), (r.onset, r.offset)) >= 0.5 for e in events)
        for r in macro.itertuples()
    ]
    assert sum(found) >= len(macro) - 1, (truth, [e.to_dict() for e in events])


def test_live_command_on_a_file_prints_events_and_a_summary(stream):
    import microfer.cli as mcli

    video, _, n = stream
    r = CliRunner().invoke(
        mcli.cli, ["live", "--video", str(video), "--json", "--max-frames", "200"]
    )
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.strip().splitlines()]
    summary = lines[-1]["summary"]
    assert summary["frames"] == min(200, n) and summary["source_fps"] == pytest.approx(30, abs=0.5)
    for event in lines[:-1]:
        assert {"onset", "apex", "offset", "type", "score", "fps"} <= set(event)


def test_live_without_a_source_is_one_line_error(monkeypatch, capsys):
    import sys

    from microfer.cli import main

    monkeypatch.setattr(sys, "argv", ["microfer", "live"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        exc.value.code == 2
        and len(err) == 1
        and "exactly one of a camera, a URL or a video file" in err[0]
    )
