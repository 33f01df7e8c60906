"""The small CNN trained inside each fold: leakage, determinism, mirroring, cache."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from microfer.clip.representation import flip_input  # noqa: E402
from microfer.learn import finetune  # noqa: E402
from microfer.learn.classify import LearnedFeatures, select_and_fit  # noqa: E402
from microfer.learn.finetune import CNNRecipe, InFoldNet, ensemble_proba  # noqa: E402
from microfer.learn.folds import evaluate_folds, leave_one_group_out, run_fold  # noqa: E402

TINY = CNNRecipe(variant="ststnet14", seeds=(0, 1), epochs=3)


def tiny_data(n_subjects=4, per=6, seed=0):
    """Flow-like inputs in [-1, 1] whose class moves u up or down in one corner."""
    rng = np.random.default_rng(seed)
    n = n_subjects * per
    y = np.tile(np.arange(3), n // 3 + 1)[:n]
    x = rng.uniform(-0.2, 0.2, (n, 3, 28, 28)).astype(np.float32)
    x[:, 0, :8, :8] += (y[:, None, None] - 1) * 0.6
    groups = np.repeat([f"d/s{i}" for i in range(n_subjects)], per)
    return x, y, groups


class Recording(InFoldNet):
    """InFoldNet that remembers every set of rows it was trained on."""

    seen: list[np.ndarray] = []

    def fit(self, X, y):
        Recording.seen.append(np.asarray(X)[:, 0].copy())
        return super().fit(X, y)


def test_flip_negates_u_only():
    x = np.random.default_rng(1).normal(size=(2, 3, 28, 28)).astype(np.float32)
    f = flip_input(x, "flow")
    np.testing.assert_array_equal(f[:, 0], -x[:, 0, :, ::-1])
    np.testing.assert_array_equal(f[:, 1:], x[:, 1:, :, ::-1])


def test_test_time_mirroring_is_invariant_to_the_mirror():
    from microfer.models.smallcnn import build_ensemble

    net = build_ensemble("ststnet14", 3, (0, 1)).eval()
    x = np.random.default_rng(2).uniform(-1, 1, (4, 3, 14, 14)).astype(np.float32)
    a = ensemble_proba(net, x, tta=True)
    b = ensemble_proba(net, flip_input(x, "flow"), tta=True)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-5)
    # without TTA the two differ: the test above can fail
    assert not np.allclose(ensemble_proba(net, x, False), ensemble_proba(net, x[..., ::-1], False))


def test_sizes_are_ststnet_sized():
    from microfer.models.smallcnn import build_ensemble

    one = build_ensemble("ststnet", 3, (0,))
    assert sum(p.numel() for p in one.parameters()) == 1683  # conv 448, BatchNorm 32, fc 1203
    five = build_ensemble("ststnet14", 3, (0, 1, 2, 3, 4))
    assert five(torch.zeros(2, 3, 14, 14)).shape == (2, 5, 3)


def test_fold_training_never_sees_the_test_subject():
    x, y, groups = tiny_data()
    Recording.seen = []
    learned = LearnedFeatures(lambda **_: Recording(TINY, x, 3), len(y))
    feats = {"flow_raw/flow": x.reshape(len(y), -1), "ststnet14/flow": learned}
    fold = leave_one_group_out(groups)[1]
    run_fold(feats, y, groups, fold, [{"kernel": "linear", "C": 1.0}], 3, 3, 0)
    # one inner fold per training subject (+ the final fit when the CNN wins)
    assert len(Recording.seen) >= 3
    # the CNN alone: no inner CV, one fit on exactly the fold's training rows
    run_fold({"ststnet14/flow": learned}, y, groups, fold, None, 3, 3, 0)
    np.testing.assert_array_equal(np.sort(Recording.seen[-1]), np.sort(fold.train_idx))
    test = set(np.asarray(fold.test_idx).tolist())
    for rows in Recording.seen:
        assert not test & set(rows.tolist())


def _preds(results):
    return [(r.group, r.feature_name, r.y_pred) for r in results]


def test_identical_across_reruns_and_jobs(tmp_path):
    x, y, groups = tiny_data(n_subjects=3)
    folds = leave_one_group_out(groups)

    def run(jobs, cache=None):
        learned = LearnedFeatures(lambda **_: InFoldNet(TINY, x, 3, cache), len(y))
        return _preds(evaluate_folds({"ststnet14/flow": learned}, y, groups, folds, n_jobs=jobs))

    first = run(1, str(tmp_path))
    assert run(1) == first
    assert run(2) == first
    assert len(list(tmp_path.rglob("*.safetensors"))) == len(folds)


def test_cache_rechooses_without_retraining(tmp_path, monkeypatch):
    x, y, groups = tiny_data(n_subjects=3)
    train_idx = np.flatnonzero(groups != "d/s0")
    learned = LearnedFeatures(lambda **_: InFoldNet(TINY, x, 3, str(tmp_path)), len(y))
    first = select_and_fit({"c": learned}, y, groups, train_idx)
    test_idx = np.flatnonzero(groups == "d/s0")

    def no_training(*a, **k):
        raise AssertionError("retrained although the cache holds this training")

    monkeypatch.setattr(finetune, "train_ensemble", no_training)
    again = select_and_fit({"c": learned}, y, groups, train_idx)
    feats = {"c": learned}
    np.testing.assert_array_equal(first.predict(feats, test_idx), again.predict(feats, test_idx))
    # a changed label is a different training: not served from the cache
    y2 = y.copy()
    y2[train_idx[0]] = (y2[train_idx[0]] + 1) % 3
    with pytest.raises(AssertionError, match="retrained"):
        select_and_fit({"c": learned}, y2, groups, train_idx)


def test_seed_changes_the_network():
    x, y, _ = tiny_data(n_subjects=2)
    a = finetune.train_ensemble(TINY, finetune.to_network_size(x, 14), y, 3)
    b = finetune.train_ensemble(
        CNNRecipe(variant="ststnet14", seeds=(5, 6), epochs=3),
        finetune.to_network_size(x, 14),
        y,
        3,
    )
    c = finetune.train_ensemble(TINY, finetune.to_network_size(x, 14), y, 3)
    sa, sb, sc = (n.state_dict()["fc_weight"] for n in (a, b, c))
    assert torch.equal(sa, sc) and not torch.equal(sa, sb)


def test_grid_names_parse_to_recipes():
    from microfer.learn.evaluate import FEATURE_GRIDS, LosoSettings, parse_feature_set

    r = parse_feature_set("ststnet14/flow", LosoSettings())
    assert isinstance(r, CNNRecipe) and r.name == "ststnet14/flow"
    assert "ststnet14/flow" in FEATURE_GRIDS["cnn"] and "ststnet14/flow" in FEATURE_GRIDS["full"]
    assert "ststnet14/flow" not in FEATURE_GRIDS["small"]  # the default stays within budget


def test_mobilevit_finetune_trains_on_fold_rows_and_reruns_identically(tmp_path):
    pytest.importorskip("timm")
    from microfer.learn.evaluate import LosoSettings, parse_feature_set
    from microfer.learn.finetune_vit import ViTRecipe
    from microfer.models import default_weights

    x, y, groups = tiny_data(n_subjects=3, per=3)
    fold = leave_one_group_out(groups)[0]
    pre = parse_feature_set(
        "mobilevit_xxs/flow/finetune/pre", LosoSettings(), str(default_weights()), {}
    )
    assert pre.block_weights and pre.name == "mobilevit_xxs/flow/finetune/pre"
    recipe = ViTRecipe(input_size=32, epochs=1, batch_size=4, block_weights=pre.block_weights)
    Recording.seen = []
    preds = []
    for cache in (str(tmp_path), str(tmp_path), None):
        learned = LearnedFeatures(lambda **_: Recording(recipe, x, 3, cache), len(y))
        preds.append(run_fold({"vit": learned}, y, groups, fold, None, 3, 3, 0).y_pred)
    assert preds[0] == preds[1] == preds[2]  # cached, and retrained from scratch: the same
    for rows in Recording.seen:
        np.testing.assert_array_equal(np.sort(rows), np.sort(fold.train_idx))


def test_full_grid_without_weights_keeps_one_random_init_finetune():
    from microfer.learn.evaluate import LosoSettings, feature_grid

    names = [fs.name for fs in feature_grid(LosoSettings(grid="full", block_weights=None))]
    assert names.count("mobilevit_xxs/flow/finetune") == 1
    assert "mobilevit_xxs/flow/finetune/pre" not in names
    pre = [fs.name for fs in feature_grid(LosoSettings(grid="full"))]  # the shipped weights
    assert "mobilevit_xxs/flow/finetune/pre" in pre and len(pre) == len(set(pre))


def test_mobilevit_seed_ensemble_averages_its_members_and_reloads(tmp_path):
    pytest.importorskip("timm")
    from dataclasses import replace

    from microfer.errors import MicroferError
    from microfer.learn.evaluate import LosoSettings, parse_feature_set

    r = parse_feature_set("mobilevit_xxs/flow/finetune_x2", LosoSettings())
    assert r.members == 2 and r.seeds == (0, 1) and r.name == "mobilevit_xxs/flow/finetune_x2"
    with pytest.raises(MicroferError, match="finetune_x3"):
        parse_feature_set("mobilevit_xxs/apex/finetune_x2", LosoSettings())
    recipe = replace(r, input_size=32, epochs=1, batch_size=4)
    x, y, _ = tiny_data(n_subjects=2, per=3)
    net = recipe.train(recipe.network_inputs(x), y, 3)
    # each member is the one-seed recipe of its seed, trained alone on the same rows
    singles = [
        replace(recipe, seed=s, members=1).train(recipe.network_inputs(x), y, 3) for s in (0, 1)
    ]
    each = [replace(recipe, seed=s, members=1).proba(m, x) for s, m in zip((0, 1), singles)]
    np.testing.assert_allclose(recipe.proba(net, x), np.mean(each, axis=0), atol=1e-5)
    assert not np.allclose(each[0], each[1])  # two seeds, two networks: the mean averages something
    rows = np.arange(len(y))[:, None]
    fitted = InFoldNet(recipe, x, 3, str(tmp_path)).fit(rows, y)
    reloaded = InFoldNet(recipe, x, 3, str(tmp_path)).fit(rows, y)  # from the cache
    np.testing.assert_allclose(fitted.predict_proba(rows), reloaded.predict_proba(rows), atol=1e-6)
