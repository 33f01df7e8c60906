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


@pytest.mark.parametrize(
    "name, layer, pool, dim",
    [
        ("vit_tiny_patch16_224", "final", "avg", 192),
        ("vit_tiny_patch16_224", "mid", "grid2", 4 * 192),
        ("vit_small_patch16_224", "final", "avg", 384),
        ("mobilevitv2_050", "final", "avg", 256),
    ],
)
def test_features_are_deterministic_and_sized(name, layer, pool, dim):
    x = np.random.default_rng(0).normal(size=(3, 3, 128, 128)).astype(np.float32)
    a = create_extractor(name, layer=layer, pool=pool, input_size=128, seed=0, batch_size=2)
    fa = a(x)
    assert fa.shape == (3, dim) and a.feature_dim == dim
    np.testing.assert_allclose(
        fa, create_extractor(name, layer=layer, pool=pool, input_size=128, seed=0)(x), atol=1e-5
    )
    assert not np.allclose(
        fa, create_extractor(name, layer=layer, pool=pool, input_size=128, seed=1)(x), atol=1e-3
    )


def test_vit_exports_to_onnx_and_reloads_its_weights(tmp_path):
    from microfer.models.onnx_extractor import OnnxExtractor

    x = np.random.default_rng(1).normal(size=(2, 3, 128, 128)).astype(np.float32)
    a = create_extractor("vit_tiny_patch16_224", layer="mid", pool="avg", input_size=64, seed=0)
    (tmp_path / "n.onnx").write_bytes(
        a.to_onnx(128)
    )  # the graph resizes 128 -> 64 as __call__ does
    np.testing.assert_allclose(OnnxExtractor(tmp_path / "n.onnx")(x), a(x), atol=1e-4)
    b = create_extractor("vit_tiny_patch16_224", layer="mid", pool="avg", input_size=64, seed=7)
    b.load_state_dict({k: v.numpy() for k, v in a.state_dict().items()})
    np.testing.assert_array_equal(b(x), a(x))


def test_usable_in_the_loso_grid_without_mobilevit_weights():
    from test_evaluate import synthetic_set

    from microfer.learn.evaluate import LosoSettings, feature_grid, run_fold
    from microfer.learn.features import extract_features

    settings = LosoSettings(
        features=("vit_tiny_patch16_224/flow/final/grid2", "mobilevitv2_050/flow/stage4/avg"),
        input_size=64,
        block_weights="default",
    )
    sets = feature_grid(settings)
    assert [fs.block_weights for fs in sets] == [
        None,
        None,
    ]  # the shipped weights are mobilevit_xxs's
    clips, y, groups = synthetic_set(n_subjects=3, per_class=2)
    X = {fs.name: extract_features(clips, fs) for fs in sets}
    assert X[sets[0].name].shape == (18, 4 * 192)
    fold = type(
        "Fold",
        (),
        {
            "train_idx": np.flatnonzero(groups != groups[0]),
            "test_idx": np.flatnonzero(groups == groups[0]),
            "group": groups[0],
        },
    )()
    result = run_fold(X, y, groups, fold, param_grid=None, inner_splits=2, n_classes=3, seed=0)
    assert result.feature_name in X and len(result.y_pred) == 6


# ---------------------------------------------------------------------------- pretraining
def _pretrained(tmp_path, variant, size=32, mix="fmix"):
    from test_pretrain import _face_set

    from microfer.learn.pretrain import PretrainSettings, pretrain

    settings = PretrainSettings(
        variant=variant,
        representation="apex",
        input_size=size,
        scope="whole",
        epochs=1,
        batch_size=4,
        seed=3,
        augment=False,
        mix=mix,
        device="cpu",
        num_threads=1,
    )
    return pretrain(
        _face_set(size=size),
        settings,
        tmp_path / f"{variant}_{mix}",
        progress=False,
        test_sets={"heldout": _face_set(n_per_class=3, size=size)},
    )


def test_vit_pretrains_and_loads_at_another_input_size(tmp_path):
    from safetensors.torch import load_file

    from microfer.errors import BundleError
    from microfer.models.weights import read_block_meta

    result = _pretrained(tmp_path, "vit_tiny_patch16_224")
    meta = read_block_meta(result.weights)
    assert (meta["variant"], meta["scope"], meta["modules"], meta["input_size"]) == (
        "vit_tiny_patch16_224",
        "whole",
        ["vit"],
        32,
    )
    saved = load_file(str(result.weights))
    assert saved["vit.pos_embed"].shape == (1, 1 + 2 * 2, 192)  # a 2 x 2 patch grid at 32 px

    x = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
    for size in (32, 64):  # 64 px: an 4 x 4 grid, the position embedding resampled
        ex = create_extractor(
            "vit_tiny_patch16_224", layer="final", input_size=size, block_weights=result.weights
        )
        state = ex.state_dict()
        assert all(
            np.array_equal(state[k].numpy(), v.numpy())
            for k, v in saved.items()
            if k != "vit.pos_embed"
        )
        assert state["vit.pos_embed"].shape == (1, 1 + (size // 16) ** 2, 192)
        assert ex.settings()["block_weights_sha256"] == meta["weights_sha256"]
        assert not np.allclose(
            ex(x), create_extractor("vit_tiny_patch16_224", input_size=size)(x), atol=1e-3
        )
    mid = create_extractor(
        "vit_tiny_patch16_224", layer="mid", input_size=64, block_weights=result.weights
    )
    assert mid(x).shape == (2, 192)

    with pytest.raises(BundleError, match="trained for 'vit_tiny_patch16_224'"):
        create_extractor("vit_small_patch16_224", input_size=32, block_weights=result.weights)
    with pytest.raises(BundleError, match="trained for 'vit_tiny_patch16_224'"):
        create_extractor("mobilevit_xxs", input_size=32, block_weights=result.weights)


def test_position_embedding_resampling_keeps_the_class_token_and_a_flat_grid():
    import torch

    from microfer.models.vit import fit_position_embedding

    old = torch.full((1, 1 + 4, 8), 0.25)
    old[:, 0] = 3.0  # the class token's own embedding
    new = fit_position_embedding(
        {"vit.pos_embed": old, "vit.x": torch.ones(2)}, {"vit.pos_embed": torch.zeros(1, 17, 8)}
    )
    assert new["vit.pos_embed"].shape == (1, 17, 8) and torch.equal(new["vit.x"], torch.ones(2))
    assert torch.allclose(new["vit.pos_embed"][:, 0], torch.full((8,), 3.0))
    assert torch.allclose(new["vit.pos_embed"][:, 1:], torch.full((16, 8), 0.25), atol=1e-6)
    # an embedding that is no square grid is left as it is, for the shape check to report
    odd = {"vit.pos_embed": torch.zeros(1, 6, 8)}
    assert fit_position_embedding(odd, {"vit.pos_embed": torch.zeros(1, 17, 8)}) is odd


def test_vit_has_no_mv2_scope():
    from microfer.learn.pretrain import build_classifier

    with pytest.raises(
        MicroferError, match="scope 'mv2' for vit_tiny_patch16_224; expected one of whole"
    ):
        build_classifier("vit_tiny_patch16_224", n_classes=3, scope="mv2", input_size=32)
    with pytest.raises(MicroferError, match="'flow_grid14' cannot be pretrained"):
        build_classifier("flow_grid14", n_classes=3, scope="whole")


def test_mobilevit_v2_pretrains_and_loads(tmp_path):
    from safetensors.torch import load_file

    from microfer.models.weights import read_block_meta

    result = _pretrained(tmp_path, "mobilevitv2_050")
    meta = read_block_meta(result.weights)
    assert (meta["variant"], meta["scope"]) == ("mobilevitv2_050", "whole")
    ex = create_extractor(
        "mobilevitv2_050", layer="final", input_size=32, block_weights=result.weights
    )
    saved, state = load_file(str(result.weights)), ex.state_dict()
    assert set(state) <= set(saved) and all(
        np.array_equal(state[k].numpy(), saved[k].numpy()) for k in state
    )
    x = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
    assert not np.allclose(ex(x), create_extractor("mobilevitv2_050", input_size=32)(x), atol=1e-3)


def test_pretrained_vit_weights_go_to_vit_candidates_of_the_loso_grid(tmp_path):
    from click.testing import CliRunner
    from test_pretrain import _fer_folder

    from microfer.cli import cli
    from microfer.learn.evaluate import LosoSettings, feature_grid

    out = tmp_path / "w"
    res = CliRunner().invoke(
        cli,
        [
            "pretrain",
            "--images",
            str(_fer_folder(tmp_path / "fer")),
            "--variant",
            "vit_tiny_patch16_224",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--input-size",
            "32",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        "--scope whole" in (out / "trunk.json").read_text()
    )  # the ViT's scope, resolved and recorded
    settings = LosoSettings(
        features=(
            "vit_tiny_patch16_224/apex/final/avg",
            "mobilevit_xxs/apex/final/avg",
            "vit_tiny_patch16_224/flow/final/avg",
        ),
        block_weights=str(out),
    )
    vit_apex, mobilevit, vit_flow = feature_grid(settings)
    assert (
        vit_apex.block_weights == str(out)
        and vit_apex.input_size == 32
        and vit_apex.name.endswith("/pre")
    )
    assert (
        mobilevit.block_weights is None and vit_flow.block_weights is None
    )  # other network / other input


def test_pretrain_report_tables_and_plots_the_runs(tmp_path):
    from click.testing import CliRunner

    from microfer.cli import cli
    from microfer.models.weights import read_block_meta

    vit = _pretrained(tmp_path, "vit_tiny_patch16_224")
    v2 = _pretrained(tmp_path, "mobilevitv2_050", mix="none")
    unfinished = _pretrained(tmp_path, "mobilevitv2_050", mix="cutout")
    for f in unfinished.weights.parent.glob("trunk.*"):
        f.unlink()  # as if stopped before its last epoch: only the checkpoint is left
    runs = [vit.weights.parent, v2.weights.parent, unfinished.weights.parent]
    res = CliRunner().invoke(
        cli, ["pretrain-report", *map(str, runs), "--out", str(tmp_path / "rep")]
    )
    assert res.exit_code == 0, res.output
    table = (tmp_path / "rep" / "pretrain_table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "backbone" not in line]
    assert [r.split(" | ")[:4] for r in rows] == [
        ["| vit_tiny_patch16_224", "fmix", "1", "0.002 (0)"],
        ["| mobilevitv2_050", "none", "1", "0.002 (0)"],
        ["| mobilevitv2_050", "cutout", "1 of 1 (unfinished)", "0.002 (0)"],
    ]
    m = read_block_meta(vit.weights)["test_metrics"]["heldout"]
    assert f"{m['accuracy']:.3f} / {m['macro_f1']:.3f}" in rows[0]
    assert (tmp_path / "rep" / "pretrain_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(
        MicroferError, match=f"{tmp_path}: no pretraining run here"
    ):  # exit 2 from the shell
        CliRunner().invoke(
            cli,
            ["pretrain-report", str(tmp_path), "--out", str(tmp_path / "rep2")],
            catch_exceptions=False,
        )
