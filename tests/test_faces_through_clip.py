"""Nothing silently wrong with faces and frames: the face is verified at the apex,
frames without it are left out of spotting, a frame size change is refused, and a frame the
caller gave is used as given or refused -- never replaced."""

import sys
import types
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from microfer.clip.prepare import PrepareSettings, prepare_clip, prepare_interval
from microfer.clip.video import ArraySource, open_frames
from microfer.errors import ClipError
from microfer.recognise.predict import Predictor

N, APEX = 30, 15  # synthetic clip: onset 0, apex 15, offset 29
CUT = 18  # frames CUT.. of the "face leaves" clip have no face


@pytest.fixture(scope="module")
def face_frames():
    from microfer.synth import load_identities
    from microfer.synth.motion import Camera, make_clip_frames

    identity = load_identities(1, frame_size=(320, 240), face_width=(110, 130), seed=0)[0]
    return make_clip_frames(
        identity, "happiness", N, 0, APEX, N - 1, 2.5, np.random.default_rng(0), Camera()
    )


def _no_face_image(shape):
    """A frame with no face: the CGI Megamind video when present, else a flat grey."""
    video = (
        Path(__file__).resolve().parents[1].parent
        / "shared/realdata/faces/debian-opencv-doc/Megamind.avi"
    )
    if video.is_file():
        frame = open_frames(video).read([0])[0]
        return cv2.resize(frame, (shape[1], shape[0]))
    return np.full(shape, 120, np.uint8)


@pytest.fixture(scope="module")
def cut_frames(face_frames):
    """A person, then a title card: the face leaves the clip at frame CUT."""
    blank = _no_face_image(face_frames[0].shape)
    return face_frames[:CUT] + [blank.copy() for _ in range(N - CUT)]


def _write(folder: Path, frames, sizes=None) -> Path:
    folder.mkdir()
    for i, frame in enumerate(frames):
        if sizes is not None:
            frame = cv2.resize(frame, sizes[i % len(sizes)])
        cv2.imwrite(str(folder / f"img{i}.png"), frame)
    return folder


class _StubPredictor:
    """microfer.recognise.predict.Predictor with the real `predict` and a stand-in model (no bundle):
    what is tested is which frames reach the model, not the model."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(Predictor)  # the real class (the CLI test patches the module's name)
        obj.prepare_settings = PrepareSettings()
        obj.classes = ["negative", "positive"]
        obj.features = lambda prepared: np.zeros((1, 4), np.float32)
        obj.teacher_state = None  # no input check (bundles trained on circulated inputs only)
        classifier = types.SimpleNamespace(
            classes=np.array([0, 1]),
            class_scores=lambda X: np.array([[0.4, 0.6]]),
            predict=lambda X: np.array([1]),
        )
        obj.bundle = types.SimpleNamespace(
            classifier=classifier, ood=None, calibrator=None, input_ood=None
        )
        return obj


# --- prepare_clip --------------------------------------------------------------------------

ARRAYS = ("onset_face", "apex_face", "flow", "strain", "landmarks", "transform", "motion_curve")


def test_face_checks_change_nothing_on_a_normal_clip(face_frames, monkeypatch):
    import microfer.clip.one_clip as prep

    checked = {apex: prepare_clip(face_frames, 0, apex, N - 1) for apex in (APEX, None)}
    monkeypatch.setattr(prep, "check_apex_face", lambda *a, **k: None)
    monkeypatch.setattr(prep, "face_presence", lambda *a, **k: [])
    for apex, new in checked.items():
        plain = prepare_clip(face_frames, 0, apex, N - 1)
        assert (new.apex, new.apex_source, new.notes, new.no_face_frames) == (
            plain.apex,
            plain.apex_source,
            "",
            (),
        )
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(new, name), getattr(plain, name), err_msg=name)


def test_no_face_at_the_apex_is_refused(cut_frames, tmp_path):
    with pytest.raises(ClipError, match="no face found in the apex frame 22") as err:
        prepare_clip(cut_frames, 0, 22, N - 1)
    assert err.value.stage == "face"
    folder = _write(tmp_path / "walks_off", cut_frames)
    with pytest.raises(ClipError) as err:
        prepare_clip(open_frames(folder), 0, 22, N - 1)
    assert (
        str(folder) in str(err.value)
        and "apex frame 22" in str(err.value)
        and err.value.stage == "face"
    )


def test_spotting_leaves_out_frames_without_the_face(cut_frames):
    clip = prepare_clip(cut_frames, 0, None, N - 1)
    assert clip.apex_source == "spotted" and clip.apex < CUT and abs(clip.apex - APEX) <= 4
    assert clip.no_face_frames == tuple(
        range(CUT, N)
    )  # exact, though checked only every few frames
    assert f"no face in frame(s) {CUT}-{N - 1}" in clip.notes
    assert clip.motion_curve.size == N and not clip.motion_curve[CUT:].any()


def test_face_that_goes_and_comes_back_is_bisected_exactly(face_frames):
    blank = _no_face_image(face_frames[0].shape)
    frames = face_frames[:20] + [blank] * 3 + face_frames[23:]  # gone in 20-22 only
    clip = prepare_clip(frames, 0, None, N - 1)
    assert clip.no_face_frames == (20, 21, 22) and "no face in frame(s) 20-22" in clip.notes
    assert clip.apex not in clip.no_face_frames


def test_face_gone_from_every_frame_after_the_onset_is_refused(face_frames):
    blank = _no_face_image(face_frames[0].shape)
    with pytest.raises(ClipError, match="no face found in frames 1-5 after the onset") as err:
        prepare_clip([face_frames[0]] + [blank] * 5, 0, None, 5)
    assert err.value.stage == "face"


def test_a_face_that_moved_far_from_the_alignment_is_refused(face_frames):
    shifted = [
        np.roll(f, 35, axis=1) for f in face_frames
    ]  # the head moved 35 px (~0.7 eye distances)
    frames = face_frames[:10] + shifted[10:]
    with pytest.raises(ClipError, match="apex frame 15 is .* eye distances away") as err:
        prepare_clip(frames, 0, APEX, N - 1)
    assert err.value.stage == "face"


def test_frame_size_change_is_refused_naming_the_frame(face_frames, tmp_path):
    folder = _write(tmp_path / "mixed", face_frames, sizes=[(320, 240), (336, 252)])
    with pytest.raises(ClipError) as err:
        prepare_clip(open_frames(folder), 0, None, N - 1)
    msg = str(err.value)
    assert (
        str(folder) in msg and "frame 1 (img1.png)" in msg and "336x252" in msg and "320x240" in msg
    )
    assert err.value.stage == "frames"
    with pytest.raises(ClipError, match="frame 15 .* 336x252 px but the onset frame 0 is 320x240"):
        prepare_clip(open_frames(folder), 0, 15, N - 1)  # only onset and apex read: still checked
    arrays = [cv2.resize(f, (336, 252)) if i == 3 else f for i, f in enumerate(face_frames)]
    with pytest.raises(ClipError, match="frame 3 is 336x252"):
        prepare_clip(arrays, 0, None, N - 1)


def test_given_apex_is_refused_not_replaced(face_frames):
    for apex, why in ((0, "equals the onset"), (25, "is outside onset..offset")):
        with pytest.raises(ClipError, match=f"given apex {apex} {why} \\(onset 0, offset 20\\)"):
            prepare_clip(face_frames, 0, apex, 20, strict_apex=True)
    # a dataset's annotated apex keeps its documented repair: spotted, with a note
    repaired = prepare_clip(face_frames, 0, 25, 20)
    assert (
        repaired.apex_source == "spotted"
        and "annotated apex 25 is outside onset..offset" in repaired.notes
    )
    kept = prepare_clip(face_frames, 0, APEX, N - 1, strict_apex=True)
    assert kept.apex == APEX and kept.apex_source == "annotated"


# --- spotting detects the face once (microfer.clip.tracking) ---------------------------------

LATE = 10  # the "late" clip's expression starts here: spotting moves the onset off frame 0


@pytest.fixture(scope="module")
def late_frames():
    from microfer.synth import load_identities
    from microfer.synth.motion import Camera, make_clip_frames

    identity = load_identities(1, frame_size=(320, 240), face_width=(110, 130), seed=1)[0]
    return make_clip_frames(
        identity, "happiness", N, LATE, LATE + 10, N - 1, 2.5, np.random.default_rng(1), Camera()
    )


def _count(monkeypatch, counts: Counter, module, name: str) -> None:
    real = getattr(module, name)

    def counted(*args, **kwargs):
        counts[name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def _detect_everywhere(monkeypatch) -> None:
    """The checks as they were before tracking: every one by a face detection."""
    import microfer.clip.one_clip as one_clip

    monkeypatch.setattr(one_clip, "same_face", lambda *a: False)
    monkeypatch.setattr(one_clip, "apex_face_held", lambda *a: False)


def test_spotting_detects_the_face_once_and_reuses_it(late_frames, monkeypatch):
    import microfer.clip.face_checks as face_checks
    import microfer.clip.one_clip as one_clip

    def spot(frames):
        counts: Counter = Counter()
        with monkeypatch.context() as m:
            for module in (one_clip, face_checks):
                _count(m, counts, module, "detect_faces")
                _count(m, counts, module, "fit_landmarks")
            got = prepare_interval(ArraySource(frames), "late")
        return got, counts

    got, counts = spot(late_frames)
    assert got.clip.onset > 0  # the onset moved off the scan's first frame: two passes ran
    # the scan's onset is detected once; face presence, both apex checks and the spotted
    # onset follow it (the spotted onset's landmarks are fitted on its own frame)
    assert counts == {"detect_faces": 1, "fit_landmarks": 2}
    _detect_everywhere(monkeypatch)
    _, before = spot(late_frames)
    assert before["detect_faces"] >= 12 and before["fit_landmarks"] == 4


def test_following_the_face_changes_nothing(late_frames, face_frames, cut_frames, monkeypatch):
    clips = {"late": late_frames, "plain": face_frames, "cut": cut_frames}
    followed = {k: prepare_interval(ArraySource(f), k) for k, f in clips.items()}
    _detect_everywhere(monkeypatch)
    for name, frames in clips.items():
        new, old = followed[name], prepare_interval(ArraySource(frames), name)
        assert (new.clip.onset, new.clip.apex, new.clip.offset, new.spotted, new.notes) == (
            old.clip.onset,
            old.clip.apex,
            old.clip.offset,
            old.spotted,
            old.notes,
        ), name
        for array in ARRAYS:
            np.testing.assert_array_equal(
                getattr(new.clip, array), getattr(old.clip, array), err_msg=f"{name}: {array}"
            )


def test_a_later_onset_keeps_the_box_only_where_the_face_stayed(late_frames, monkeypatch):
    """prepare_clip's memo: a later onset frame takes the first call's box while the face
    has not moved (TRACKED_SHIFT_PX); after a 4 px jump of the head it is detected again."""
    import microfer.clip.one_clip as one_clip

    jumped = late_frames[:3] + [np.roll(f, 4, axis=1) for f in late_frames[3:]]
    for frames, detections in ((late_frames, 0), (jumped, 1)):
        memo: dict = {}
        prepare_clip(frames, 0, None, N - 1, memo=memo, motion=False)
        counts: Counter = Counter()
        with monkeypatch.context() as m:
            _count(m, counts, one_clip, "detect_faces")
            clip = prepare_clip(frames, 5, LATE + 10, N - 1, memo=memo)
        assert counts["detect_faces"] == detections
        fresh = prepare_clip(frames, 5, LATE + 10, N - 1)
        np.testing.assert_array_equal(clip.flow, fresh.flow)


# --- predict (the real Predictor.predict, a stand-in model) ----------------------------------


def test_predict_respects_or_refuses_given_frames(face_frames, cut_frames):
    predictor = _StubPredictor()
    assert isinstance(predictor, Predictor)
    with pytest.raises(ClipError, match="frames: the given apex 25 is after the given offset 20"):
        predictor.predict(face_frames, onset=0, apex=25, offset=20)
    with pytest.raises(ClipError, match="the given apex 3 is not after the given onset 5"):
        predictor.predict(face_frames, onset=5, apex=3)
    with pytest.raises(ClipError, match="the given apex 0 is the first frame"):
        predictor.predict(face_frames, apex=0)
    p = predictor.predict(face_frames, apex=12)  # onset/offset spotted around the given apex
    assert (
        p.apex == 12
        and p.given == ["apex"]
        and "apex" not in p.spotted
        and p.onset < 12 <= p.offset
    )
    with pytest.raises(ClipError, match="no face found in the given apex frame 22"):
        predictor.predict(cut_frames, apex=22)
    with pytest.raises(ClipError, match="no face found in the apex frame 22"):
        predictor.predict(cut_frames, onset=0, apex=22, offset=N - 1)


def test_predict_spots_only_among_frames_with_the_face(cut_frames):
    p = _StubPredictor().predict(cut_frames)
    assert p.apex < CUT and p.offset < CUT and p.spotted == ["onset", "apex", "offset"]
    assert f"no face in frame(s) {CUT}-{N - 1}" in p.notes


def _main(args, monkeypatch, capsys):
    import microfer.recognise.predict
    from microfer.cli import main

    monkeypatch.setattr(microfer.recognise.predict, "Predictor", _StubPredictor)
    monkeypatch.setattr(sys, "argv", ["microfer", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


def test_cli_predict_refuses_with_exit_2_naming_the_clip(
    face_frames, cut_frames, tmp_path, monkeypatch, capsys
):
    walks_off = _write(tmp_path / "walks_off", cut_frames)
    mixed = _write(tmp_path / "mixed", face_frames[:8], sizes=[(320, 240), (336, 252)])
    model = str(tmp_path)  # the stand-in predictor loads nothing
    last = str(N - 1)
    for args, expect in (
        (
            [str(walks_off), "--onset", "0", "--apex", "22", "--offset", last],
            "no face found in the apex frame 22",
        ),
        (
            [str(walks_off), "--onset", "0", "--apex", "25", "--offset", "20"],
            "apex 25 is after the given offset",
        ),
        (
            [str(mixed), "--onset", "0", "--apex", "3", "--offset", "7"],
            "frame 3 (img3.png) is 336x252",
        ),
        ([str(mixed)], "frame 1 (img1.png) is 336x252"),
    ):
        code, err = _main(["predict", *args, "--model", model], monkeypatch, capsys)
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith("error: ") and str(args[0]) in err[0] and expect in err[0], err
