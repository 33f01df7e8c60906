"""Training-free motion descriptors, fusions of feature sets, and the grid that holds them."""

from __future__ import annotations

import numpy as np
import pytest

from microfer.errors import BundleError, MicroferError
from microfer.learn.features import (
    FeatureModel,
    FeatureSetting,
    FusedSetting,
    extract_features,
    feature_config,
    feature_setting_from_config,
)
from microfer.models import create_extractor, is_descriptor, list_models
from microfer.models.descriptors import HOOF_BINS, WORK_SIZE
from microfer.records import PreparedClip


def _flow(n=2, size=56, u=0.0, v=0.0):
    x = np.zeros((n, 3, size, size), np.float32)
    x[:, 0], x[:, 1] = u, v
    return x


def test_descriptors_are_registered_by_name():
    for name in ("flow_raw", "flow_grid14", "flow_grid7", "flow_hoof4"):
        assert name in list_models() and is_descriptor(name)
    assert not is_descriptor("mobilevit_xxs")


def test_grid_removes_what_the_whole_face_did():
    """A uniform shift (head translation, or the unknown zero of a min-max flow) is no movement."""
    grid = create_extractor("flow_grid14")
    still = grid(_flow())
    shifted = grid(_flow(u=0.7, v=-0.3))
    np.testing.assert_allclose(shifted, still, atol=1e-6)
    assert grid.feature_dim == 4 * 14 * 14 == still.shape[1]


def test_grid_locates_a_local_movement():
    x = _flow(n=1, size=28)
    x[0, 1, 0:4, 0:4] = 1.0  # v moves in the top-left corner only
    feats = create_extractor("flow_grid7")(x).reshape(4, 7, 7)  # u, v, strain, magnitude
    v_cells = feats[1]
    assert v_cells[0, 0] == pytest.approx(1.0)
    assert np.abs(v_cells.ravel()[1:]).max() == 0.0
    assert feats[3, 0, 0] == pytest.approx(1.0) and feats[3].sum() == pytest.approx(1.0)


def test_hoof_histogram_points_where_the_flow_goes():
    x = _flow(n=1, size=28)
    x[0, 0, :14, :14] = 1.0  # top-left cells move right (+u) ...
    x[0, 1, 14:, 14:] = -1.0  # ... bottom-right cells move up (-v)
    hoof = create_extractor("flow_hoof4")
    hist = hoof(x)[0, 4 * 16 :].reshape(
        4, 4, HOOF_BINS
    )  # after the u, v, strain, magnitude cell means
    right = int(np.floor((np.arctan2(0.0, 1.0) + np.pi) / (2 * np.pi) * HOOF_BINS)) % HOOF_BINS
    up = int(np.floor((np.arctan2(-1.0, 0.0) + np.pi) / (2 * np.pi) * HOOF_BINS)) % HOOF_BINS
    assert hist[0, 0, right] == pytest.approx(1.0, abs=1e-4)
    assert hist[3, 3, up] == pytest.approx(1.0, abs=1e-4)
    assert right != up


def test_raw_is_the_resized_flow_without_centring():
    x = np.random.default_rng(0).normal(size=(3, 3, 56, 56)).astype(np.float32)
    raw = create_extractor("flow_raw")(x)
    expected = x.reshape(3, 3, WORK_SIZE, 2, WORK_SIZE, 2).mean(axis=(3, 5)).reshape(3, -1)
    np.testing.assert_allclose(raw, expected, atol=1e-6)


def test_descriptor_refuses_wrong_shapes_and_weights():
    grid = create_extractor("flow_grid14")
    with pytest.raises(MicroferError, match=r"\(N, 3, H, W\)"):
        grid(np.zeros((2, 28, 28), np.float32))
    grid.load_state_dict({})  # nothing to load is fine
    with pytest.raises(BundleError, match="no weights"):
        grid.load_state_dict({"w": np.zeros(1)}, source="x.safetensors")


def _clip(seed: int, size: int = 32) -> PreparedClip:
    rng = np.random.default_rng(seed)
    face = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    return PreparedClip(
        onset=0,
        apex=1,
        offset=2,
        apex_source="annotated",
        onset_face=face,
        apex_face=face,
        flow=rng.normal(size=(size, size, 2)).astype(np.float32),
        strain=np.abs(rng.normal(size=(size, size))).astype(np.float32),
        landmarks=np.zeros((68, 2), np.float32),
        transform=np.eye(2, 3, dtype=np.float32),
        face_box=(0, 0, size, size),
    )


def test_descriptor_on_a_non_flow_representation_is_refused():
    with pytest.raises(MicroferError, match="describes flow"):
        extract_features([_clip(0)], FeatureSetting(variant="flow_grid7", representation="apex"))


def test_fusion_concatenates_parts_and_caches_each(tmp_path):
    clips = [_clip(i) for i in range(3)]
    keys = [f"d/s/c{i}" for i in range(3)]
    a = FeatureSetting(variant="flow_grid7", representation="flow", layer="none", pool="none")
    b = FeatureSetting(variant="flow_hoof4", representation="flow", layer="none", pool="none")
    fused = FusedSetting((a, b))
    assert fused.name == "flow_grid7/flow + flow_hoof4/flow" and fused.representations == ("flow",)
    both = extract_features(clips, fused, keys=keys, feature_dir=tmp_path)
    np.testing.assert_allclose(
        both, np.concatenate([extract_features(clips, a), extract_features(clips, b)], 1)
    )
    assert (tmp_path / a.key()).is_dir() and (tmp_path / b.key()).is_dir()
    with pytest.raises(MicroferError, match="at least two"):
        FusedSetting((a,))


def test_fusion_with_a_network_round_trips_through_a_bundle_config():
    net = FeatureSetting(
        variant="mobilevit_xxs", representation="apex", layer="stage3", pool="avg", input_size=64
    )
    fused = FusedSetting(
        (
            FeatureSetting(variant="flow_grid7", representation="flow", layer="none", pool="none"),
            net,
        )
    )
    again = feature_setting_from_config(feature_config(fused))
    assert again == fused
    model = FeatureModel(fused)
    state = model.state_dict()
    assert state and all(k.startswith("part1.") for k in state)  # the descriptor has no weights
    clips = [_clip(0, 64), _clip(1, 64)]
    before = model(clips)
    other = FeatureModel(
        FusedSetting((fused.parts[0], FeatureSetting(**{**net.__dict__, "seed": 5})))
    )
    assert not np.allclose(other(clips), before)
    other.load_state_dict(state)
    np.testing.assert_allclose(other(clips), before, atol=1e-5)
    with pytest.raises(BundleError, match="no part"):
        other.load_state_dict(
            {**state, "part7.x": state[next(iter(state))]}, source="n.safetensors"
        )


def test_grid_entries_parse_and_weights_go_only_where_they_fit(tmp_path):
    from microfer.learn.evaluate import FEATURE_GRIDS, LosoSettings, parse_feature_set

    settings = LosoSettings(block_weights=None)
    w = str(tmp_path / "w")
    meta = {"variant": "mobilevit_xxs", "representation": "apex", "input_size": 64}
    pre = parse_feature_set("mobilevit_xxs/apex/final/avg", settings, w, meta)
    assert pre.block_weights == str(tmp_path / "w") and pre.input_size == 64
    other_rep = parse_feature_set("mobilevit_xxs/flow/final/avg", settings, w, meta)
    other_variant = parse_feature_set("mobilevit_xs/apex/final/avg", settings, w, meta)
    assert other_rep.block_weights is None and other_variant.block_weights is None
    assert other_rep.input_size == settings.input_size
    fused = parse_feature_set("flow_grid14/flow + mobilevit_xxs/apex/final/avg", settings, w, meta)
    assert isinstance(fused, FusedSetting) and fused.parts[1].block_weights == str(tmp_path / "w")
    for bad in ("nonsense/flow", "flow_grid14", "mobilevit_xxs/apex/final"):
        with pytest.raises(MicroferError, match="feature set"):
            parse_feature_set(bad, settings, w, meta)
    for name, spec in FEATURE_GRIDS.items():  # every shipped grid parses
        assert [parse_feature_set(t, LosoSettings(block_weights=None)) for t in spec], name


def test_in_fold_choice_is_not_worse_than_its_best_member():
    """Choosing among feature sets inside the folds costs at most noise against the best one."""
    from microfer.learn.evaluate import compute_metrics, evaluate_folds, leave_one_group_out

    rng = np.random.default_rng(0)
    n_subjects, per = 8, 12
    y = np.tile(np.arange(3), n_subjects * per // 3)
    groups = np.repeat([f"s{i}" for i in range(n_subjects)], per)
    informative = rng.normal(size=(y.size, 6)) + np.eye(3)[y] @ rng.normal(size=(3, 6)) * 1.5
    noise = rng.normal(size=(y.size, 6))
    folds = leave_one_group_out(groups)

    def uf1(sets):
        res = evaluate_folds(sets, y, groups, folds, n_classes=3)
        return compute_metrics(y, res, ["a", "b", "c"])["pooled"]["uf1"], res

    best, _ = uf1({"informative": informative})
    chosen, res = uf1({"noise": noise, "informative": informative})
    assert best > 0.6
    assert chosen >= best - 0.05
    assert sum(r.feature_name == "informative" for r in res) >= len(res) - 1
