"""microfer synth: real layouts and coding formats, determinism, and motion that is really there."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pandas as pd
import pytest
from click.testing import CliRunner

from microfer.errors import MicroferError
from microfer.synth import (
    MARKER,
    TRUTH_NAME,
    Camera,
    Event,
    draw_pattern,
    generate,
    generate_composite,
    load_identities,
    make_clip_frames,
    render_clip,
)
from microfer.synth.faces import usable_photos
from microfer.synth.motion import FIXED, control_points

SHORT = (16, 20)  # frames per clip: enough for neutral / rise / fall, quick to write


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def sets(synth_root):
    """One small output per layout, shared by the layout/coding/adapter tests."""
    return {
        "casme2": generate(
            "casme2",
            synth_root / "casme2",
            subjects=2,
            clips_per_subject=3,
            seed=3,
            clip_frames=SHORT,
            apex_unknown=0.2,
            progress=False,
        ),
        "samm": generate(
            "samm",
            synth_root / "samm",
            subjects=2,
            clips_per_subject=2,
            seed=3,
            clip_frames=SHORT,
            apex_unknown=0.25,
            progress=False,
        ),
        "smic": generate(
            "smic",
            synth_root / "smic",
            subjects=2,
            clips_per_subject=2,
            seed=3,
            clip_frames=SHORT,
            progress=False,
        ),
        "casme_sq": generate(
            "casme_sq",
            synth_root / "casme_sq",
            subjects=1,
            clips_per_subject=2,
            seed=3,
            frame_size=(320, 240),
            progress=False,
        ),
        "video": generate(
            "video",
            synth_root / "video",
            subjects=1,
            clips_per_subject=1,
            seed=3,
            clip_frames=SHORT,
            progress=False,
        ),
    }


def truth(s) -> pd.DataFrame:
    return pd.read_csv(s.truth_file, dtype={"subject": str, "clip": str}, keep_default_na=False)


def digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32)


# ---------------------------------------------------------------- layouts and coding files


def test_casme2_layout_and_numbering(sets):
    s = sets["casme2"]
    t = truth(s)
    assert s.n_clips == len(t) == 6
    assert sorted(t["subject"].unique()) == ["sub01", "sub02"]
    for r in t.itertuples():
        assert re.fullmatch(r"EP\d\d_\d\d f?".replace(" ", ""), r.clip)
        folder = s.root / r.subject / r.clip
        numbers = sorted(
            int(re.fullmatch(r"img(\d+)\.jpg", p.name).group(1)) for p in folder.iterdir()
        )
        # absolute, contiguous numbering from the first to the last frame, onset/apex/offset inside
        assert numbers == list(range(r.first_frame, r.last_frame + 1))
        assert r.first_frame < r.onset < r.apex < r.offset < r.last_frame
        assert SHORT[0] <= len(numbers) <= SHORT[1]
    assert set(t["emotion"]) <= {"happiness", "surprise", "disgust", "repression", "others"}
    # one of the six apexes is hidden in the coding file, as '/' like sub04/EP12_01f
    assert (t["coded_apex"] == "").sum() == 1


def test_casme2_coding_header_matches_real_file(sets, annotations_dir):
    real = openpyxl.load_workbook(annotations_dir / "CASME2" / "CASME2-coding-20140508.xlsx")
    ours = openpyxl.load_workbook(sets["casme2"].coding_file)
    assert ours.sheetnames == real.sheetnames

    def header(ws):
        return [c.value for c in ws[1]]

    assert header(ours.worksheets[0]) == header(real.worksheets[0])
    df = pd.read_excel(sets["casme2"].coding_file, dtype={"Subject": str})
    assert set(df["Subject"]) == {"01", "02"}  # text with the zero padding, like the real file
    t = truth(sets["casme2"])
    hidden = t.loc[t["coded_apex"] == "", "clip"].tolist()
    assert df.set_index("Filename").loc[hidden, "ApexFrame"].tolist() == ["/"]


def test_samm_layout_and_header(sets, annotations_dir):
    s = sets["samm"]
    t = truth(s)
    assert sorted(t["subject"].unique()) == ["006", "007"]
    for r in t.itertuples():
        assert re.fullmatch(rf"{r.subject}_\d_\d", r.clip)
        frames = sorted(p.name for p in (s.root / r.subject / r.clip).iterdir())
        assert frames[0] == f"{r.subject}_{r.first_frame:05d}.jpg"
        assert len(frames) == r.last_frame - r.first_frame + 1
        assert cv2.imread(str(s.root / r.subject / r.clip / frames[0])).shape == (540, 960, 3)
    real = openpyxl.load_workbook(annotations_dir / "SAMM" / "SAMM_Micro_FACS_Codes_v2.xlsx").active
    ours = openpyxl.load_workbook(s.coding_file).active
    assert ours.title == real.title
    assert [c.value for c in ours[14]] == [c.value for c in real[14]]
    for row in (
        1,
        3,
        4,
        6,
        7,
        8,
        10,
        11,
        12,
    ):  # preamble as in the real file (row 2 carries our note)
        assert [c.value for c in ours[row]] == [c.value for c in real[row]]
    df = pd.read_excel(s.coding_file, header=13, dtype={"Subject": str})
    assert set(df["Subject"]) == {"006", "007"}
    assert (df["Duration"] == df["Offset Frame"] - df["Onset Frame"] + 1).all()
    assert (df["Apex Frame"] == -1).sum() == 1


def test_smic_layout_and_header(sets, annotations_dir):
    s = sets["smic"]
    t = truth(s)
    for r in t.itertuples():
        emotion = {"ne": "negative", "po": "positive", "sur": "surprise"}[r.clip.split("_")[1]]
        assert r.emotion == emotion and re.fullmatch(rf"{r.subject}_(ne|po|sur)_\d\d", r.clip)
        folder = s.root / "HS" / r.subject / "micro" / emotion / r.clip
        assert (folder / f"image{r.onset}.bmp").is_file() and (
            folder / f"image{r.offset}.bmp"
        ).is_file()
    real = openpyxl.load_workbook(annotations_dir / "SMIC" / "SMIC-HS-E_annotation_orig.xlsx")
    ours = openpyxl.load_workbook(s.coding_file)
    assert ours.sheetnames == real.sheetnames
    for sheet in ("HS", "VIS"):
        assert [c.value for c in ours[sheet][1]] == [c.value for c in real[sheet][1]][
            : len(ours[sheet][1])
        ]
        assert all(v is None for v in [c.value for c in real[sheet][1]][len(ours[sheet][1]) :])
    df = pd.read_excel(s.coding_file, sheet_name="HS")
    assert not any("apex" in str(c).lower() for c in df.columns)
    assert (t["coded_apex"] == "").all() and (t["apex"] > t["onset"]).all()
    assert (df["TotalMF1"] == df["OffsetF"] - df["OnsetF"] + 1).all()


def test_casme_sq_layout_and_csv_format(sets, annotations_dir):
    s = sets["casme_sq"]
    real = pd.read_csv(
        annotations_dir / "CASME_sq" / "CAS(ME)^2code_final(Updated).csv", header=None
    )
    ours = pd.read_csv(s.coding_file, header=None)
    assert ours.shape[1] == real.shape[1] == 11
    assert set(ours[7]) == {"macro-expression", "micro-expression"}  # one of each per video
    assert (
        ours[10].str.fullmatch(r"s15/15_\d{4}[a-z]+").all() and ours[10].isin(set(real[10])).all()
    )
    assert ours[1].str.fullmatch(r"(anger|disgust|happy)\d_\d").all()
    assert (ours[9] == ours[4] - ours[2]).all()  # duration = offset - onset, as in the real file
    video = s.root / "rawpic" / ours[10].iloc[0]
    n = len(list(video.glob("img*.jpg")))
    assert (
        (video / "img1.jpg").is_file() and (video / f"img{n}.jpg").is_file() and ours[4].max() < n
    )
    t = truth(s)
    amp = t.set_index("type")["amplitude_px"]
    assert 1.5 <= amp["micro"] <= 3.0 and 6.0 <= amp["macro"] <= 10.0


def test_video_layout(sets):
    s = sets["video"]
    r = truth(s).iloc[0]
    cap = cv2.VideoCapture(str(s.root / r["frame_dir"]))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (480, 640, 3)
    assert s.coding_file is None and n == r["last_frame"] + 1 and r["first_frame"] == 0


def test_adapters_read_synth_coding_files(sets):
    from microfer.datasets.registry import get  # the adapters are part of microfer now

    for layout, dataset in (
        ("casme2", "casme2"),
        ("samm", "samm"),
        ("smic", "smic_hs"),
        ("casme_sq", "casme_sq"),
    ):
        s = sets[layout]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no dropped rows
            df = get(dataset).read(s.coding_file, s.root)
        t = truth(s)
        merged = df.merge(t, on=["subject", "clip"], suffixes=("", "_truth"), validate="1:1")
        assert len(merged) == len(df) == len(t), layout
        assert (merged["onset"] == merged["onset_truth"]).all() and (
            merged["offset"] == merged["offset_truth"]
        ).all()
        assert (merged["emotion"] == merged["emotion_truth"]).all()
        if layout != "smic":  # SMIC has no apex column
            coded = merged["coded_apex"].replace("", np.nan).astype(float)
            assert merged["apex"].astype(float).equals(coded), layout
        for r in merged.itertuples():
            for frame in (r.onset, r.offset, r.apex_truth):
                assert (s.root / r.frame_template.format(frame=int(frame))).is_file(), (
                    layout,
                    r.frame_template,
                )


# ---------------------------------------------------------------- determinism and the output folder


def test_same_seed_same_bytes(tmp_path):
    kw = dict(
        subjects=2, clips_per_subject=2, clip_frames=(14, 16), frame_size=(320, 240), progress=False
    )
    a = digest(generate("casme2", tmp_path / "a", seed=11, **kw).root)
    b = digest(generate("casme2", tmp_path / "b", seed=11, **kw).root)
    c = digest(generate("casme2", tmp_path / "c", seed=12, **kw).root)
    assert a == b and len(a) > 50
    assert a["CASME2-coding-synth.xlsx"] != c["CASME2-coding-synth.xlsx"]

    def first(d):
        return d[min(k for k in d if k.startswith("sub01/"))]

    assert first(a) != first(c)


def test_clip_pixels_do_not_depend_on_other_clips(tmp_path):
    kw = dict(seed=5, clip_frames=(14, 16), frame_size=(320, 240), progress=False)
    small = truth(generate("casme2", tmp_path / "small", subjects=1, clips_per_subject=1, **kw))
    big = generate("casme2", tmp_path / "big", subjects=2, clips_per_subject=1, **kw)
    r = small.iloc[0]
    rel = f"{r['subject']}/{r['clip']}/img{r['apex']}.jpg"
    assert (tmp_path / "small" / rel).read_bytes() == (big.root / rel).read_bytes()


def test_output_folder_safety(tmp_path):
    runner = CliRunner()
    from microfer.cli.synth import synth_cmd

    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    args = [
        "--layout",
        "casme2",
        "--subjects",
        "2",
        "--clips-per-subject",
        "1",
        "--frames",
        "14-15",
        "--quiet",
    ]
    with pytest.raises(MicroferError, match="not empty"):
        runner.invoke(synth_cmd, args + ["--out", str(user)], catch_exceptions=False)
    res = runner.invoke(synth_cmd, args + ["--out", str(user), "--force"], catch_exceptions=False)
    assert res.exit_code == 0 and (user / "notes.txt").read_text() == "mine"
    assert "coding file:" in res.output and "2 clips" in res.output
    # a previous synth output is replaced: fewer subjects leave no stale clips, user files stay
    res = runner.invoke(
        synth_cmd,
        [
            "--layout",
            "casme2",
            "--subjects",
            "1",
            "--clips-per-subject",
            "1",
            "--frames",
            "14-15",
            "--quiet",
            "--out",
            str(user),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0
    assert (
        not (user / "sub02").exists()
        and (user / "notes.txt").is_file()
        and (user / MARKER).is_file()
    )
    assert len(truth(type("S", (), {"truth_file": user / TRUTH_NAME}))) == 1


# ---------------------------------------------------------------- motion


@pytest.fixture(scope="module")
def identity():
    return load_identities(1, frame_size=(640, 480), face_width=(240, 240), seed=0)[0]


def _region_masks(identity, field, pattern):
    """Pixels near the moving landmarks, and face pixels far from them."""
    h, w = identity.image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    sigma = 0.07 * identity.face_width
    moving = control_points(identity.landmarks)[pattern.moving_landmarks]
    d = np.min([np.hypot(xx - x, yy - y) for x, y in moving], axis=0)
    x0, y0, x1, y1 = identity.face_box
    face = np.zeros((h, w), bool)
    face[y0:y1, x0:x1] = True
    return d < sigma, face & (d > 4 * sigma)


@pytest.mark.parametrize("emotion", sorted(FIXED) + ["negative", "others"])
def test_motion_is_local_to_the_class_regions(identity, emotion):
    rng = np.random.default_rng(1)
    pattern = draw_pattern(emotion, rng)
    clip = render_clip(
        identity,
        [Event(pattern, 2, 6, 10, 2.5)],
        11,
        rng,
        Camera(noise_sigma=0, drift_px=0, drift_deg=0, flicker=0),
    )
    inside, outside = _region_masks(identity, clip.fields[0], pattern)
    mag = clip.fields[0].full(inside.shape)
    assert mag.max() == pytest.approx(2.5, rel=1e-4)  # the stated apex amplitude, in pixels
    assert mag[inside].mean() > 0.2 * 2.5 and mag[outside].max() < 0.1 * 2.5
    diff = np.abs(clip.frames[6].astype(np.float32) - clip.frames[2]).mean(-1)
    assert diff[inside].mean() > 3 * diff[outside].mean()
    assert int(np.argmax(clip.displacement_peak)) == 6  # the apex is the frame of peak displacement
    assert np.array_equal(clip.frames[0], clip.frames[2])  # nothing moves before the onset
    assert np.array_equal(clip.frames[2], clip.frames[10])  # and nothing is left after the offset


def test_noise_drift_and_neutral_frames(identity):
    rng = np.random.default_rng(2)
    frames = make_clip_frames(
        identity, "surprise", 20, onset=4, apex=11, offset=16, amplitude=2.5, rng=rng
    )
    f = [x.astype(np.float32) for x in frames]
    x0, y0, x1, y1 = identity.face_box
    face = (slice(y0, y1), slice(x0, x1))
    neutral = np.abs(f[1] - f[0])[face]
    # before the onset frames differ by sensor noise only (sigma 2: mean |N(0, 2*sqrt2)| ~ 2.3)
    assert 1.5 < neutral.mean() < 3.5
    assert abs(np.mean(f[1][face] - f[0][face])) < 0.6
    expressive = np.abs(f[11] - f[4])[face].mean()
    assert expressive > neutral.mean() + 0.5
    # the same generator state gives the same frames
    again = make_clip_frames(
        identity,
        "surprise",
        20,
        onset=4,
        apex=11,
        offset=16,
        amplitude=2.5,
        rng=np.random.default_rng(2),
    )
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))


def test_written_apex_is_the_frame_of_peak_motion(sets):
    """From the JPEGs alone: inside the face's expressive regions (found by dlib on the onset
    frame, as the pipeline does), the frame that differs most from the onset frame is the apex."""
    from microfer.clip.face import detect_landmarks

    s = sets["casme2"]
    for r in truth(s).itertuples():
        folder = s.root / r.subject / r.clip
        onset_bgr = cv2.imread(str(folder / f"img{r.onset}.jpg"))
        pts = detect_landmarks(onset_bgr).points
        mask = np.zeros(onset_bgr.shape[:2], np.uint8)
        pad = int(0.08 * (pts[16, 0] - pts[0, 0]))
        for group in (slice(17, 27), slice(27, 36), slice(36, 48), slice(48, 68), slice(5, 12)):
            x0, y0 = (pts[group].min(0) - pad).astype(int)
            x1, y1 = (pts[group].max(0) + pad).astype(int)
            mask[max(0, y0) : y1, max(0, x0) : x1] = 1
        onset = cv2.GaussianBlur(gray(folder / f"img{r.onset}.jpg"), (0, 0), 2)
        scores = {
            n: np.abs(cv2.GaussianBlur(gray(folder / f"img{n}.jpg"), (0, 0), 2) - onset)[
                mask > 0
            ].mean()
            for n in range(r.onset, r.offset + 1)
        }
        assert abs(max(scores, key=scores.get) - r.apex) <= 1, (r.clip, scores)


def test_amplitudes_in_stated_ranges(sets, tmp_path):
    assert truth(sets["casme2"])["amplitude_px"].between(1.5, 3.0).all()
    macro = generate(
        "casme2",
        tmp_path / "macro",
        subjects=1,
        clips_per_subject=3,
        seed=1,
        amplitude="macro",
        clip_frames=(14, 15),
        frame_size=(320, 240),
        progress=False,
    )
    t = truth(macro)
    assert t["amplitude_px"].between(6.0, 10.0).all() and (t["type"] == "macro").all()


def test_dlib_finds_the_face_on_synthetic_frames(sets):
    from microfer.clip.face import detect_landmarks

    s = sets["casme2"]
    r = truth(s).iloc[0]
    found = detect_landmarks(
        cv2.imread(str(s.root / r["subject"] / r["clip"] / f"img{r['onset']}.jpg"))
    )
    assert found is not None and found.n_faces == 1
    assert 200 * 0.8 < found.points[16, 0] - found.points[0, 0] < 280 * 1.2


# ---------------------------------------------------------------- faces


def test_faces_from_a_folder_of_photos(faces_dir, tmp_path):
    photos = usable_photos(faces_dir)
    names = {p.path.name for p in photos}
    assert "obama_partial_face.jpg" not in names  # face cut by the border
    assert "messi5.jpg" not in names  # face too small to upscale
    assert {"multi_face.jpg", "t1.jpg"} <= names  # several faces: the largest is used
    assert len(photos) >= 8
    from microfer.cli.synth import synth_cmd

    res = CliRunner().invoke(
        synth_cmd,
        [
            "--layout",
            "casme2",
            "--subjects",
            "3",
            "--clips-per-subject",
            "1",
            "--frames",
            "14-15",
            "--quiet",
            "--faces",
            str(faces_dir),
            "--out",
            str(tmp_path / "o"),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0
    used = {
        i.split("/")[0]
        for i in truth(type("S", (), {"truth_file": tmp_path / "o" / TRUTH_NAME}))["identity"]
    }
    assert len(used) == 3 and used <= {p.path.stem for p in photos}


def test_more_subjects_than_photos_are_augmented_variants():
    ids = load_identities(6, frame_size=(640, 480), seed=4)
    names = [i.name for i in ids]
    assert len(set(names)) == 6 and sum("/v1:" in n for n in names) == 2 and "flip" in names[4]
    again = load_identities(6, frame_size=(640, 480), seed=4)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(ids, again))
    for i in ids:
        assert i.image.shape == (480, 640, 3)
        le, re_ = i.landmarks[36:42].mean(0), i.landmarks[42:48].mean(0)
        assert le[0] < re_[0]  # landmark semantics kept after a flip (36-41 stay on the image left)
        assert abs(np.degrees(np.arctan2(re_[1] - le[1], re_[0] - le[0]))) < 15


def test_no_usable_face_is_a_clear_error(tmp_path):
    (tmp_path / "blank.png").write_bytes(
        cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes()
    )
    with pytest.raises(MicroferError, match="no usable face"):
        usable_photos(tmp_path)


def test_composite_is_balanced(tmp_path):
    sets = generate_composite(
        tmp_path / "comp",
        subjects_per_dataset=1,
        clips_per_subject=3,
        seed=2,
        clip_frames=(14, 15),
        progress=False,
    )
    assert set(sets) == {"casme2", "samm", "smic"}
    for layout, s in sets.items():
        t = truth(s)
        assert sorted(t["class3"]) == ["negative", "positive", "surprise"], layout
    ids = {truth(s)["identity"].iloc[0].split("/")[0] for s in sets.values()}
    assert len(ids) == 3  # each dataset starts from another photo


def test_rerun_removes_only_recorded_files(tmp_path):
    """An interrupted or older synth output is cleaned by its marker's file list, nothing else,
    and a marker naming files outside the folder cannot reach them."""
    import json

    out = tmp_path / "out"
    (out / "sub09" / "EP01_01").mkdir(parents=True)
    (out / "sub09" / "EP01_01" / "img5.jpg").write_bytes(b"old frame")
    (out / "keep.txt").write_text("user")
    (tmp_path / "outside.txt").write_text("user")
    (out / MARKER).write_text(
        json.dumps(
            {
                "tool": "microfer synth",
                "complete": False,
                "files": ["sub09/EP01_01/img5.jpg", "../outside.txt"],
            }
        )
    )
    generate(
        "casme2",
        out,
        subjects=1,
        clips_per_subject=1,
        seed=0,
        clip_frames=(12, 12),
        frame_size=(320, 240),
        progress=False,
    )
    assert not (out / "sub09").exists()
    assert (out / "keep.txt").is_file() and (tmp_path / "outside.txt").is_file()
    marker = json.loads((out / MARKER).read_text())
    assert marker["complete"] is True and all((out / f).is_file() for f in marker["files"])
