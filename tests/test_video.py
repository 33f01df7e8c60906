"""Frame sources: image folders (numbering, prefixes, corrupt files) and video files."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from microfer.clip import video, video_file
from microfer.clip.video import ArraySource, frames_for_sample, open_frames
from microfer.errors import ClipError, LayoutError
from microfer.records import Sample


def _frame(value: int, size=(24, 32)) -> np.ndarray:
    return np.full((*size, 3), value, np.uint8)


def _write(folder: Path, names_values: dict[str, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in names_values.items():
        cv2.imwrite(str(folder / name), _frame(value))


def _sample(template: str, onset=1, apex=None, offset=3) -> Sample:
    return Sample(
        "casme2", "sub01", "EP01", onset, apex, offset, "happiness", "positive", template, 200.0
    )


def test_folder_numbers_sort_naturally_and_read_by_number(tmp_path):
    _write(tmp_path, {"img1.png": 10, "img2.png": 20, "img10.png": 100, "notes.txt.png": 0})
    (tmp_path / "readme.txt").write_text("not a frame")
    src = open_frames(tmp_path)
    assert src.numbers == [1, 2, 10]
    frames = src.read([10, 1])
    assert [int(f[0, 0, 0]) for f in frames] == [100, 10]
    with pytest.raises(ClipError, match="frame"):
        src.read([3])


def test_several_prefixes_need_a_choice(tmp_path):
    _write(tmp_path, {"img46.png": 46, "img47.png": 47, "reg_img46.png": 146, "reg_img47.png": 147})
    with pytest.raises(LayoutError) as err:
        open_frames(tmp_path)
    assert "'img<n>'" in str(err.value) and "'reg_img<n>'" in str(err.value)
    assert open_frames(tmp_path, prefix="reg_img").read([47])[0][0, 0, 0] == 147
    assert open_frames(tmp_path, prefix="img").read([47])[0][0, 0, 0] == 47
    with pytest.raises(LayoutError, match="crop_"):
        open_frames(tmp_path, prefix="crop_")


def test_reads_only_the_frames_asked_for(tmp_path, monkeypatch):
    _write(tmp_path, {f"img{i}.png": i for i in range(1, 30)})
    calls = []
    real = video.read_image
    monkeypatch.setattr(video, "read_image", lambda p: calls.append(Path(p).name) or real(p))
    open_frames(tmp_path).read([5, 9])
    assert calls == ["img5.png", "img9.png"]


def test_truncated_and_corrupt_frames_name_the_file(tmp_path):
    _write(tmp_path, {})
    cv2.imwrite(
        str(tmp_path / "img1.jpg"), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    )
    data = (tmp_path / "img1.jpg").read_bytes()
    (tmp_path / "img2.jpg").write_bytes(data[: len(data) // 2])  # cut mid-way (a killed copy)
    (tmp_path / "img3.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "img4.jpg").write_bytes(b"")
    src = open_frames(tmp_path)
    assert src.read([1])[0].shape == (64, 64, 3)
    for n, what in [(2, "truncated"), (3, "corrupt"), (4, "empty")]:
        with pytest.raises(ClipError, match=what) as err:
            src.read([n])
        assert f"img{n}.jpg" in str(err.value)


def test_frames_for_sample_resolves_templates(tmp_path):
    _write(
        tmp_path / "sub01" / "EP01",
        {"img1.png": 1, "img2.png": 2, "img3.png": 3, "reg_img1.png": 9},
    )
    src = frames_for_sample(tmp_path, _sample("sub01/EP01/img{frame}.jpg"))
    assert src.numbers == [1, 2, 3]  # the raw sequence, not the cropped one
    _write(tmp_path / "006" / "006_1_2", {"006_05562.png": 62, "006_05563.png": 63})
    src = frames_for_sample(tmp_path, _sample("006/006_1_2/006_{frame:05d}.jpg"))
    assert src.numbers == [5562, 5563] and src.read([5563])[0][0, 0, 0] == 63
    with pytest.raises(LayoutError, match="casme2/sub01/EP02"):
        frames_for_sample(
            tmp_path,
            Sample(
                "casme2", "sub01", "EP02", 1, None, 3, "", "", "sub01/EP02/img{frame}.jpg", 200.0
            ),
        )


def write_video(path: Path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for i in range(n):
        writer.write(_frame(10 * i, (48, 64)))
    writer.release()


@pytest.mark.parametrize("decord_ok", [True, False])
def test_video_frames_are_zero_based_indices(tmp_path, monkeypatch, decord_ok):
    path = tmp_path / "clip.avi"
    write_video(path, 12)
    if not decord_ok:  # decord missing or failing: OpenCV reads the same frames

        def broken(*a, **k):
            raise RuntimeError("no decord")

        monkeypatch.setattr(video_file, "_decord_read", broken)
    src = open_frames(path)
    assert src.numbers == list(range(12))
    values = [int(f.mean()) for f in src.read([7, 2, 11])]
    assert all(abs(v - e) <= 3 for v, e in zip(values, [70, 20, 110]))
    shifted = open_frames(path, first_number=100)
    assert shifted.numbers[0] == 100 and abs(int(shifted.read([103])[0].mean()) - 30) <= 3


def test_real_video_file(faces_dir):
    src = open_frames(faces_dir / "debian-opencv-doc" / "Megamind.avi")
    assert len(src.numbers) > 100
    a, b = src.read([0, 100])
    assert (
        a.shape == b.shape and a.shape[2] == 3 and a.dtype == np.uint8 and not np.array_equal(a, b)
    )


def test_array_source_numbers():
    src = ArraySource([_frame(1), _frame(2)], [40, 41])
    assert src.numbers == [40, 41] and src.read([41])[0][0, 0, 0] == 2
    assert ArraySource([_frame(1)]).numbers == [0]
    with pytest.raises(ClipError):
        ArraySource([_frame(1)], [1, 2])


def test_cropped_variant_is_found_by_the_template_prefix(tmp_path):
    """A CASME2_Cropped folder (reg_img*.jpg only) resolves through the raw template img{frame}.jpg."""
    import cv2
    import numpy as np

    from microfer.clip.video import frames_for_sample
    from microfer.records import Sample

    clip = tmp_path / "sub01" / "EP02_01f"
    clip.mkdir(parents=True)
    for n in (46, 47, 48):
        cv2.imwrite(str(clip / f"reg_img{n}.jpg"), np.full((8, 8, 3), n, np.uint8))
    sample = Sample(
        "casme2",
        "sub01",
        "EP02_01f",
        46,
        47,
        48,
        "happiness",
        "happiness",
        "sub01/EP02_01f/img{frame}.jpg",
        200.0,
    )
    source = frames_for_sample(tmp_path, sample)
    assert list(source.numbers) == [46, 47, 48]
    assert abs(int(source.read([47])[0].mean()) - 47) <= 2


def test_a_broken_video_gives_one_microfer_line_and_no_decoder_noise(tmp_path, capfd):
    """FFmpeg (under decord and OpenCV) prints C-level lines on a broken file; the user sees one."""
    import cv2
    import numpy as np
    import pytest

    from microfer.clip.video import open_frames
    from microfer.errors import ClipError

    good = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(good), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), 10 * i, np.uint8))
    writer.release()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 3])  # no index atom left
    capfd.readouterr()
    with pytest.raises(ClipError) as info:
        open_frames(broken).read([0])
    message = str(info.value)
    assert str(broken) in message and "\n" not in message
    assert "moov atom not found" in message  # the decoder's reason, quoted once
    out, err = capfd.readouterr()
    assert "moov" not in err and "video_reader" not in err and err.strip() == ""


def test_a_truncated_video_streams_what_it_has_and_says_so(tmp_path):
    """A cut file once looked like a short video: exit 0 and no word about the lost frames."""
    import warnings

    import cv2
    import numpy as np

    from microfer.clip.video import open_frames, stream_frames

    full = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(44):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    source = open_frames(cut)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = sum(1 for _ in stream_frames(source, prefetch=0))
    assert 0 < n < len(source.numbers) <= 44
    (message,) = [str(w.message) for w in caught]
    assert str(cut) in message and f"only {n} could be decoded" in message


def test_frames_above_the_size_cap_are_shrunk_on_decode(tmp_path, monkeypatch):
    from microfer.clip.frames import MAX_FRAME_SIDE
    from microfer.clip.video import stream_frames

    big = np.zeros((2304, 4096, 3), np.uint8)
    big[:, 2048:] = 200  # right half bright: the shrink must keep the picture, not crop it
    folder = tmp_path / "uhd"
    folder.mkdir()
    for i in (1, 2):
        cv2.imwrite(str(folder / f"img{i}.png"), big)
    cv2.imwrite(str(folder / "img3.png"), _frame(90))
    src = open_frames(folder)
    a, b, small = src.read([1, 2, 3])
    assert a.shape == b.shape == (1152, MAX_FRAME_SIDE, 3)
    assert a[:, :1000].max() == 0 and a[:, 1100:].min() == 200
    assert np.array_equal(small, _frame(90))  # frames within the cap are left as decoded
    assert [f.shape for _, f in stream_frames(src)] == [a.shape, a.shape, small.shape]
    assert ArraySource([big]).read([0])[0].shape == a.shape

    wide = tmp_path / "wide.avi"
    writer = cv2.VideoWriter(str(wide), cv2.VideoWriter_fourcc(*"MJPG"), 25, (2400, 600))
    for i in range(3):
        writer.write(np.full((600, 2400, 3), 40 * i, np.uint8))
    writer.release()
    clip = open_frames(wide)
    shapes = {f.shape for f in clip.read([0, 2])} | {f.shape for _, f in stream_frames(clip)}
    monkeypatch.setattr(video_file, "_decord_read", lambda *a: 1 / 0)  # OpenCV's path as well
    shapes |= {f.shape for f in clip.read([1])}
    assert shapes == {(512, MAX_FRAME_SIDE, 3)}


def test_a_4k_face_clip_still_finds_and_aligns_the_face():
    from microfer.clip.frames import MAX_FRAME_SIDE
    from microfer.clip.prepare import prepare_clip
    from microfer.synth import load_identities
    from microfer.synth.motion import Camera, make_clip_frames

    identity = load_identities(1, frame_size=(384, 216), face_width=(50, 60), seed=0)[0]
    frames = make_clip_frames(
        identity, "happiness", 6, 0, 3, 5, 2.5, np.random.default_rng(0), Camera()
    )
    uhd = [cv2.resize(f, (3840, 2160), interpolation=cv2.INTER_CUBIC) for f in frames]
    prepared = prepare_clip(uhd, 0, 3, 5)
    x0, y0, x1, y1 = prepared.face_box
    assert 0 <= x0 < x1 <= MAX_FRAME_SIDE and 0 <= y0 < y1 <= 1152 and x1 - x0 > 150
    assert prepared.apex_face.shape[:2] == prepared.onset_face.shape[:2]
    assert np.isfinite(prepared.flow).all() and prepared.apex == 3


def _textured_video(path: Path, n: int) -> None:
    """An MPEG-4 video (the kind `microfer.synth` writes) whose frames all differ."""
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (128, 96))
    for i in range(n):
        writer.write(np.roll(base, 2 * i, axis=1))
    writer.release()


def test_a_read_straight_through_is_opencvs_with_decords_frames(tmp_path, monkeypatch):
    """Frames reached without a seek come from OpenCV reading on (half decord's cost), pixel
    for pixel what decord decodes; frames far apart still come from decord's exact seek."""
    decord = pytest.importorskip("decord")  # noqa: F841  (what is compared needs it)
    path = tmp_path / "clip.mp4"
    _textured_video(path, 45)
    used = []
    for name in ("_cv2_read", "_decord_read"):
        real = getattr(video_file, name)

        def counted(p, indices, real=real, name=name):
            used.append(name)
            return real(p, indices)

        monkeypatch.setattr(video_file, name, counted)
    src = open_frames(path)
    every = src.read(src.numbers)
    assert used == ["_cv2_read"]
    expected = video_file._decord_read(path, list(range(45)))
    assert all(np.array_equal(a, b) for a, b in zip(every, expected))
    used.clear()
    far = src.read([0, 40])  # a gap over SEEK_GAP frames: decord seeks
    assert used == ["_decord_read"]
    assert np.array_equal(far[1], every[40])
