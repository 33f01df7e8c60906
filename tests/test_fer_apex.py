"""The FER teacher as an apex extractor: the shipped, sha-checked weights; deterministic;
the same numbers as the teacher's own numpy forward on the grey face and its mirror."""

from __future__ import annotations

import numpy as np
import pytest

from microfer.clip.representation import face_to_input
from microfer.errors import BundleError, MicroferError
from microfer.learn.features import FeatureSetting
from microfer.learn.grids import STACK_GRIDS, feature_grid, parse_feature_set
from microfer.learn.loso_settings import LosoSettings
from microfer.models import create_extractor, fer_teacher

torch = pytest.importorskip("torch")


def _faces(n=3, size=64) -> np.ndarray:
    """BGR images with structure on one side, so the mirror is a different image."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size]
    base = (128 + 90 * np.sin(xx / 4.0) * np.cos(yy / 9.0) * (xx < size // 3))[..., None]
    return np.clip(base + rng.normal(0, 20, (n, size, size, 3)), 0, 255).astype(np.uint8)


def _inputs(faces: np.ndarray) -> np.ndarray:
    return np.stack([face_to_input(f) for f in faces])


def _numpy_reference(faces: np.ndarray) -> np.ndarray:
    """The teacher in numpy on BT.601 grey levels, face and mirror averaged (image-model style)."""
    from safetensors.numpy import load_file

    st = fer_teacher.teacher_paths()[0]
    state = {k: v.astype(np.float32) for k, v in load_file(str(st)).items()}
    f = faces.astype(np.float64)
    grey = (0.114 * f[..., 0] + 0.587 * f[..., 1] + 0.299 * f[..., 2]).astype(np.float32)
    out = []
    for g in (grey, np.ascontiguousarray(grey[:, :, ::-1])):
        fmap, logits = fer_teacher.numpy_features(state, ((g / 255.0 - 0.5) * 2.0)[:, None])
        out.append(np.concatenate([fmap.mean(axis=(2, 3)), logits], 1))
    return (out[0] + out[1]) / 2


def test_apex_features_are_the_shipped_teachers_and_deterministic():
    faces = _faces()
    a = create_extractor("fer_mini_xception", layer="final", num_threads=1)(_inputs(faces))
    b = create_extractor("fer_mini_xception", layer="final", num_threads=1)(_inputs(faces))
    assert a.shape == (3, 128 + 7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, _numpy_reference(faces), atol=2e-4)
    logits = create_extractor("fer_mini_xception", layer="logits")(_inputs(faces))
    np.testing.assert_allclose(logits, a[:, 128:], atol=1e-5)


def test_mirror_average_makes_features_mirror_invariant():
    faces = _faces(n=2)
    ex = create_extractor("fer_mini_xception", layer="final", pool="grid2")
    x = _inputs(faces)
    f, m = ex(x), ex(np.ascontiguousarray(x[..., ::-1]))
    # 2x2 cells: the mirror swaps left and right cells, and the sums stay
    cells = lambda z: z.reshape(len(z), -1, 2, 2)  # noqa: E731
    np.testing.assert_allclose(cells(f), cells(m)[..., ::-1], atol=1e-4)
    assert not np.allclose(cells(f)[..., 0], cells(f)[..., 1], atol=1e-3)


def test_damaged_shipped_teacher_is_refused(tmp_path, monkeypatch):
    st, js = fer_teacher.teacher_paths()
    (tmp_path / st.name).write_bytes(st.read_bytes()[:-8] + b"\0" * 8)
    (tmp_path / js.name).write_text(js.read_text())
    monkeypatch.setattr(fer_teacher, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(BundleError, match="sha256"):
        create_extractor("fer_mini_xception")


def test_grid_entry_reads_64px_and_the_cache_key_follows_the_weights(monkeypatch):
    settings = LosoSettings(input_size=128)
    fs = parse_feature_set("fer_mini_xception/apex/final/avg", settings, None, None)
    assert isinstance(fs, FeatureSetting)
    assert (fs.input_size, fs.block_weights, fs.name) == (
        64,
        None,
        "fer_mini_xception/apex/final/avg",
    )
    assert fs.weights_sha256() == fer_teacher.file_sha256(fer_teacher.teacher_paths()[0])
    key = fs.key()
    from microfer.models import fer_apex, registry

    entry = registry._REGISTRY["fer_mini_xception"]
    monkeypatch.setitem(
        registry._REGISTRY,
        "fer_mini_xception",
        registry.Entry(entry.factory, entry.family, None, 64, lambda: "0" * 64),
    )
    assert fs.key() != key  # other shipped weights never reuse these cached features
    assert fer_apex.VARIANT == "fer_mini_xception"


def test_teacher_extractor_refuses_what_it_cannot_read():
    with pytest.raises(MicroferError, match="layers"):
        create_extractor("fer_mini_xception", layer="stage3")
    with pytest.raises(MicroferError, match="weights"):
        create_extractor("fer_mini_xception", block_weights="some/weights.json")
    with pytest.raises(MicroferError, match="64"):
        create_extractor("fer_mini_xception", input_size=128)


def test_stack_apex_grid_stacks_the_descriptors_with_the_teacher():
    names = [fs.name for fs in feature_grid(LosoSettings(grid="stack_apex"))]
    assert "stack_apex" in STACK_GRIDS
    assert names[-1] == "fer_mini_xception/apex/final/avg"
    assert "flow_grid14/flow" in names


def test_onnx_export_gives_the_same_features():
    """`train` bundles export network parts to ONNX, which `predict` runs without torch."""
    ort = pytest.importorskip("onnxruntime")
    ex = create_extractor("fer_mini_xception", num_threads=1)
    x = _inputs(_faces(size=96))
    session = ort.InferenceSession(ex.to_onnx(96))
    np.testing.assert_allclose(session.run(None, {"input": x})[0], ex(x), atol=1e-4)
