"""timm ViT and MobileViT v2 backbones by name: features, ONNX export, the loso grid."""
import numpy as np
import pytest

from microfer.errors import MicroferError
from microfer.models import create_extractor, list_models

BACKBONES = ["vit_tiny_patch16_224", "vit_small_patch16_224", "mobilevitv2_050"]


def test_registered_beside_mobilevit():
    assert set(BACKBONES) | {"mobilevit_xxs"} <= set(list_models())
    with pytest.raises(MicroferError, match="multiple of 16"):
        create_extractor("vit_tiny_patch16_224", input_size=120)
    with pytest.raises(MicroferError, match="unknown ViT layer"):
        create_extractor("vit_tiny_patch16_224", layer="stage4")


@pytest.mark.parametrize("name, layer, pool, dim", [
    ("vit_tiny_patch16_224", "final", "avg", 192), ("vit_tiny_patch16_224", "mid", "grid2", 4 * 192),
    ("vit_small_patch16_224", "final", "avg", 384), ("mobilevitv2_050", "final", "avg", 256)])
def test_features_are_deterministic_and_sized(name, layer, pool, dim):
    x = np.random.default_rng(0).normal(size=(3, 3, 128, 128)).astype(np.float32)
    a = create_extractor(name, layer=layer, pool=pool, input_size=128, seed=0, batch_size=2)
    fa = a(x)
    assert fa.shape == (3, dim) and a.feature_dim == dim
    np.testing.assert_allclose(fa, create_extractor(name, layer=layer, pool=pool, input_size=128, seed=0)(x),
                               atol=1e-5)
    assert not np.allclose(fa, create_extractor(name, layer=layer, pool=pool, input_size=128, seed=1)(x), atol=1e-3)


def test_vit_exports_to_onnx_and_reloads_its_weights(tmp_path):
    from microfer.models.onnx_extractor import OnnxExtractor

    x = np.random.default_rng(1).normal(size=(2, 3, 128, 128)).astype(np.float32)
    a = create_extractor("vit_tiny_patch16_224", layer="mid", pool="avg", input_size=64, seed=0)
    (tmp_path / "n.onnx").write_bytes(a.to_onnx(128))  # the graph resizes 128 -> 64 as __call__ does
    np.testing.assert_allclose(OnnxExtractor(tmp_path / "n.onnx")(x), a(x), atol=1e-4)
    b = create_extractor("vit_tiny_patch16_224", layer="mid", pool="avg", input_size=64, seed=7)
    b.load_state_dict({k: v.numpy() for k, v in a.state_dict().items()})
    np.testing.assert_array_equal(b(x), a(x))


def test_usable_in_the_loso_grid_without_mobilevit_weights():
    from microfer.evaluate import LosoSettings, feature_grid, run_fold
    from microfer.features import extract_features
    from test_evaluate import synthetic_set

    settings = LosoSettings(features=("vit_tiny_patch16_224/flow/final/grid2", "mobilevitv2_050/flow/stage4/avg"),
                            input_size=64, block_weights="default")
    sets = feature_grid(settings)
    assert [fs.block_weights for fs in sets] == [None, None]  # the shipped weights are mobilevit_xxs's
    clips, y, groups = synthetic_set(n_subjects=3, per_class=2)
    X = {fs.name: extract_features(clips, fs) for fs in sets}
    assert X[sets[0].name].shape == (18, 4 * 192)
    fold = type("Fold", (), {"train_idx": np.flatnonzero(groups != groups[0]),
                             "test_idx": np.flatnonzero(groups == groups[0]), "group": groups[0]})()
    result = run_fold(X, y, groups, fold, param_grid=None, inner_splits=2, n_classes=3, seed=0)
    assert result.feature_name in X and len(result.y_pred) == 6
