"""The circulated derived MEGC2019 composite inputs (the real folder when present beside the checkout) as a prepare source.

The real files are read in place; broken variants are built from a few of them copied
into tmp_path. Nothing of that folder is ever written into the repository.
"""

import os
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from microfer.clip.cache import Cache
from microfer.clip.composite_cache import prepare_cache
from microfer.clip.representation import to_input
from microfer.datasets import composite_inputs as ci
from microfer.errors import ClipError, MicroferError
from microfer.records import PreparedClip

# 5 subjects of 3 datasets (39 rows): SMIC s1_ vs s01 apex names, the two SMIC clips
# without onset/offset in the manifest, SAMM, CASME II
SUBSET = {
    ("casme2", "sub02"),
    ("casme2", "sub09"),
    ("samm", "007"),
    ("smic", "s01"),
    ("smic", "s02"),
}


@pytest.fixture(scope="module")
def inputs_dir(shared_dir):
    path = shared_dir / "composite_inputs"
    if not (path / ci.CSV_NAME).is_file():
        pytest.skip(f"derived composite inputs not available ({path} is absent)")
    return path


@pytest.fixture(scope="module")
def table(inputs_dir):
    return ci.read_table(inputs_dir)


def _copy_subset(src, dst, subjects=SUBSET):
    """The rows of `subjects` and their two images, in the circulated layout (names untouched)."""
    df = pd.read_csv(src / ci.CSV_NAME, dtype=str, keep_default_na=False)
    keep = df[[(d, s) in subjects for d, s in zip(df["dataset"], df["sub"])]].reset_index(drop=True)
    (dst / ci.APEX_DIR).mkdir(parents=True)
    (dst / ci.FLOW_DIR).mkdir()
    for r in keep.to_dict("records"):
        shutil.copy2(src / ci.APEX_DIR / r["imagename"], dst / ci.APEX_DIR / r["imagename"])
        flow = f"{r['sub']}_{r['filename_o']} .png"
        shutil.copy2(src / ci.FLOW_DIR / flow, dst / ci.FLOW_DIR / flow)
    keep.to_csv(dst / ci.CSV_NAME, index=False)
    return keep


# ---------------------------------------------------------------------------- the real folder
def test_all_207_rows_match_the_composite_manifest_with_their_quirks(inputs_dir, table):
    assert len(table.rows) == 207 and table.problems == []
    keys = [r.key for r in table.rows]
    assert len(set(keys)) == 207
    by_dataset = pd.Series([k.split("/")[0] for k in keys]).value_counts().to_dict()
    assert by_dataset == {"casme2": 83, "samm": 82, "smic_hs": 42}
    for r in table.rows:  # the expected (first) name is the one that exists, quirks and all
        assert (inputs_dir / ci.APEX_DIR / r.apex_names[0]).is_file(), r
        assert (
            r.flow_names[0].endswith(" .png")
            and (inputs_dir / ci.FLOW_DIR / r.flow_names[0]).is_file()
        ), r
    rows = {r.key: r for r in table.rows}
    smic = rows["smic_hs/s1/s1_ne_01"]  # csv: smic,s01,s01_ne_01 ; apex s01_s1_ne_01.jpg
    assert smic.apex_names[0] == "s01_s1_ne_01.jpg" and smic.flow_names[0] == "s01_s01_ne_01 .png"
    assert rows["samm/007/007_3_1"].flow_names[0] == "007_007_3_1 .png"
    assert rows["casme2/sub02/EP01_11f"].apex_names[0] == "sub02_EP01_11f.jpg"
    # labels: the csv's 0/1/2 and the manifest's class agree on every row (else a problem)
    from microfer.learn.protocols import manifests_dir

    mf = pd.read_csv(manifests_dir() / ci.MANIFEST_NAME, dtype=str, keep_default_na=False)
    labels = {
        f"{d}/{s}/{c}": lab
        for d, s, c, lab in zip(mf["dataset"], mf["subject"], mf["clip"], mf["label"])
    }
    assert all(labels[r.key] == r.label for r in table.rows)
    # manifest frames: the SMIC clips missing from SMIC-E have none, SMIC has no apex
    assert (smic.apex, rows["smic_hs/s1/s1_ne_02"].onset) == (-1, -1)
    assert rows["casme2/sub02/EP01_11f"].apex == int(mf.set_index("clip").loc["EP01_11f", "apex"])


def test_flow_channels_are_strain_v_u_in_cv2_order(inputs_dir, table):
    """Index 0 is strain (median near 0 after min-max); u/v told apart by recomputing strain."""
    medians, better_uv = [], 0
    for r in table.rows:
        im = cv2.imread(
            str(inputs_dir / ci.FLOW_DIR / r.flow_names[0]), cv2.IMREAD_UNCHANGED
        ).astype(np.float64)
        medians.append(np.median(im.reshape(-1, 3), axis=0))
        s = im[..., ci.STRAIN_CHANNEL][2:-2, 2:-2].ravel()

        def fit(u, v):  # best correlation over the unknown per-image scale ratio of u and v
            best = -1.0
            for ratio in np.exp(np.linspace(-2.5, 2.5, 21)):
                uy, ux = np.gradient(u)
                vy, vx = np.gradient(v * ratio)
                pred = np.sqrt(ux**2 + vy**2 + 0.5 * (uy + vx) ** 2)[2:-2, 2:-2].ravel()
                best = max(best, np.corrcoef(pred, s)[0, 1])
            return best

        u, v = im[..., ci.U_CHANNEL], im[..., ci.V_CHANNEL]
        better_uv += fit(u, v) > fit(v, u)
    medians = np.array(medians)
    assert ci.STRAIN_CHANNEL == 0 and (medians[:, 0] < 64).all()
    assert np.median(medians[:, 0]) < 30 and np.median(medians[:, [1, 2]], axis=0).min() > 90
    assert better_uv > 0.7 * len(table.rows)  # 167 of 207 when this was written


# ---------------------------------------------------------------------------- prepare, broken copies
@pytest.fixture(scope="module")
def broken_cache(inputs_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rows = _copy_subset(inputs_dir, root)
    (root / ci.FLOW_DIR / "sub02_EP01_11f .png").unlink()  # missing flow
    (root / ci.APEX_DIR / "sub09_EP02_01f.jpg").write_bytes(b"not a jpeg at all")  # garbled apex
    (root / ci.APEX_DIR / "007_007_3_1.jpg").unlink()  # missing apex
    cv2.imwrite(
        str(root / ci.FLOW_DIR / "s02_s02_sur_01 .png"), np.zeros((32, 32, 3), np.uint8)
    )  # wrong shape
    df = pd.read_csv(root / ci.CSV_NAME, dtype=str, keep_default_na=False)
    df.loc[(df["sub"] == "sub09") & (df["filename_o"] == "EP06_01f"), "label"] = (
        "1"  # disagrees with the manifest
    )
    df.loc[df["filename_o"] == "007_5_3", "sub"] = "7"  # SAMM subject without padding
    extra = df.iloc[[0]].assign(filename_o="EP99_99", imagename="sub02_EP99_99.jpg")
    df = pd.concat([df, extra], ignore_index=True)  # not a composite sample
    df.to_csv(root / ci.CSV_NAME, index=False)
    out = tmp_path_factory.mktemp("cache")
    summary = prepare_cache(root, out)
    return root, out, summary, len(rows)


def test_broken_inputs_are_excluded_naming_the_file_and_the_rest_prepared(broken_cache):
    root, out, summary, n = broken_cache
    reasons = {p.key: p.reason for p in summary.failed}
    assert set(reasons) == {
        "casme2/sub02/EP01_11f",
        "casme2/sub09/EP02_01f",
        "samm/007/007_3_1",
        "smic_hs/s2/s2_sur_01",
        "casme2/sub09/EP06_01f",
    }
    assert (
        "sub02_EP01_11f .png" in reasons["casme2/sub02/EP01_11f"]
        and "missing" in reasons["casme2/sub02/EP01_11f"]
    )
    assert (
        "sub09_EP02_01f.jpg" in reasons["casme2/sub09/EP02_01f"]
        and "unreadable" in reasons["casme2/sub09/EP02_01f"]
    )
    assert "007_007_3_1.jpg" in reasons["samm/007/007_3_1"]
    assert (
        "s02_s02_sur_01 .png" in reasons["smic_hs/s2/s2_sur_01"]
        and "(32, 32, 3)" in reasons["smic_hs/s2/s2_sur_01"]
    )
    assert "disagrees" in reasons["casme2/sub09/EP06_01f"]
    assert [p.reason for p in summary.unmatched] and "EP99_99" in summary.unmatched[0].reason
    assert summary.ok == n - 5 and summary.written == n - 5
    text = summary.text()
    assert (
        f"ok: {n - 5}" in text and "flow image missing" in text and "csv rows not used: 1" in text
    )

    cache = Cache(out, ci.CompositeSettings().key())
    index = cache.index().set_index("key")
    assert (index["status"] == "ok").sum() == n - 5 and (index["status"] == "failed").sum() == 5
    assert "samm/007/007_5_3" in index.index  # sub '7' -> 007, file found under '007_007_5_3 .png'
    clip = cache.load("smic_hs/s1/s1_ne_01")
    assert clip.apex_face.shape == (224, 224, 3) and clip.apex_face.dtype == np.uint8
    assert (
        clip.flow.shape == (28, 28, 2)
        and clip.flow.dtype == np.float32
        and clip.strain.shape == (28, 28)
    )
    assert (
        0.0 <= clip.flow.min() and clip.flow.max() <= 1.0 and clip.flow_units == "minmax_per_image"
    )
    assert (
        clip.onset_face.shape == (0, 0, 3)
        and clip.apex_source == "derived_inputs"
        and clip.apex == -1
    )
    assert (
        clip.landmarks.shape == (68, 2)
        and clip.face_box == (0, 0, 224, 224)
        and "s01_s1_ne_01.jpg" in clip.notes
    )
    raw = cv2.imread(str(root / ci.FLOW_DIR / "s01_s01_ne_01 .png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(clip.flow[..., 0] * 255, raw[..., 2].astype(np.float32))  # u = stored R
    assert np.array_equal(np.round(clip.strain * 255), raw[..., 0].astype(np.float32))
    settings = (cache.dir / "settings.json").read_text()
    assert '"representations"' in settings and '"minmax_per_image"' in settings


def test_rerun_rewrites_nothing_and_a_repaired_file_is_picked_up(
    broken_cache, inputs_dir, tmp_path
):
    root, out, _, n = broken_cache
    cache_dir = tmp_path / "cache"
    shutil.copytree(out, cache_dir)
    files = [p for p in cache_dir.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    again = prepare_cache(root, cache_dir)
    assert again.written == 0 and again.unchanged == n - 5 and len(again.failed) == 5
    assert {p: p.stat().st_mtime_ns for p in files} == before
    work = (
        tmp_path / "inputs"
    )  # reasons name files by their full path: elsewhere they are new reasons
    shutil.copytree(root, work)
    shutil.copy2(
        inputs_dir / ci.FLOW_DIR / "sub02_EP01_11f .png", work / ci.FLOW_DIR / "sub02_EP01_11f .png"
    )
    fixed = prepare_cache(work, cache_dir)
    assert fixed.written == 1 and len(fixed.failed) == 4
    cache = Cache(cache_dir, ci.CompositeSettings().key())
    assert cache.has("casme2/sub02/EP01_11f") and not cache.has_failed("casme2/sub02/EP01_11f")


def test_minmax_flow_input_is_bounded_and_there_is_no_onset_face(broken_cache):
    _, out, _, _ = broken_cache
    clip = Cache(out, ci.CompositeSettings().key()).load("casme2/sub02/EP02_04f")
    x = to_input(clip, "flow")
    assert x.shape == (3, 28, 28) and x.min() >= -1.0 and x.max() <= 1.0
    assert np.allclose(x[0], 2 * clip.flow[..., 0] - 1) and np.allclose(x[2], 2 * clip.strain - 1)
    assert to_input(clip, "apex").shape == (3, 224, 224)
    with pytest.raises(ClipError, match="no onset face"):
        to_input(clip, "onset_apex")


def test_entries_without_flow_units_load_as_pixels(tmp_path):
    import json

    cache = Cache(tmp_path, "k")
    z = np.zeros((4, 4, 3), np.uint8)
    clip = PreparedClip(
        onset=1,
        apex=2,
        offset=3,
        apex_source="annotated",
        onset_face=z,
        apex_face=z,
        flow=np.full((4, 4, 2), 0.1, np.float32),
        strain=np.zeros((4, 4), np.float32),
        landmarks=np.zeros((68, 2), np.float32),
        transform=np.eye(2, 3, dtype=np.float32),
        face_box=(0, 0, 4, 4),
    )
    path = cache.save("casme2/sub01/EP01", clip)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    assert meta.pop("flow_units") == "pixels"
    np.savez_compressed(
        path, meta=np.array(json.dumps(meta)), **arrays
    )  # as written before the field existed
    old = cache.load("casme2/sub01/EP01")
    assert old.flow_units == "pixels"
    assert np.allclose(to_input(old, "flow")[0], 0.1 * 128.0 / 4)  # pixel flows keep their scale


# ---------------------------------------------------------------------------- evaluation
@pytest.fixture
def tiny_grid(monkeypatch):
    from microfer.learn import evaluate

    grid = ["flow_grid7/flow", "mobilevit_xxs/onset_apex/stage4/grid2"]
    monkeypatch.setitem(evaluate.FEATURE_GRIDS, "tiny", grid)
    svm = [{"kernel": ["linear"], "C": [1.0], "class_weight": ["balanced"]}]
    monkeypatch.setitem(evaluate.PARAM_GRIDS, "tiny", svm)
    return "tiny"


def test_loso_on_a_few_subjects_uses_the_offered_representations_and_reports_exclusions(
    broken_cache, tiny_grid, tmp_path
):
    from click.testing import CliRunner

    from microfer.cli import cli
    from microfer.learn.evaluate import LosoSettings, run_loso

    _, out, _, n = broken_cache
    settings = LosoSettings(
        grid=tiny_grid,
        input_size=32,
        inner_splits=3,
        num_threads=1,
        feature_dir=str(tmp_path / "features"),
    )
    result = run_loso("megc2019-composite", out, settings=settings, progress=False)
    assert [fs["representation"] for fs in result.feature_sets] == [
        "flow"
    ]  # onset_apex dropped: no onset face
    assert len(result.samples) == n - 5 and len(result.folds) == 5
    reasons = dict(
        zip(result.excluded["subject"] + "/" + result.excluded["clip"], result.excluded["reason"])
    )
    assert (
        "sub02_EP01_11f .png" in reasons["sub02/EP01_11f"]
        and "disagrees" in reasons["sub09/EP06_01f"]
    )
    assert result.metrics["excluded"]["count"] == 442 - (n - 5)
    assert "not in the cache (not prepared)" in result.metrics["excluded"]["by_reason"]

    # the CLI prepares the same folder in one command (and says so)
    res = CliRunner().invoke(
        cli,
        [
            "prepare",
            "composite_inputs",
            "--root",
            str(broken_cache[0]),
            "--out",
            str(tmp_path / "c2"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 3, res.output  # written, 5 samples failed (listed)
    assert f"ok: {n - 5}" in res.output and "failed: 5" in res.output


def test_a_grid_asking_only_for_what_the_cache_lacks_is_refused(broken_cache, monkeypatch):
    from microfer.learn import evaluate

    _, out, _, _ = broken_cache
    monkeypatch.setitem(
        evaluate.FEATURE_GRIDS, "onset_only", ["mobilevit_xxs/onset_apex/stage4/grid2"]
    )
    with pytest.raises(MicroferError, match="offers representations apex, flow"):
        evaluate.gather_features(
            "megc2019-composite",
            out,
            settings=evaluate.LosoSettings(grid="onset_only"),
            progress=False,
        )


def test_derived_inputs_train_a_bundle_that_prepares_clips_the_same_way(
    broken_cache, tiny_grid, tmp_path
):
    """The circulated flows are what `prepare --flow tvl1 --flow-format minmax28` computes
    from frames: the bundle records those settings and reads the flow only (tests/test_circulated.py
    has the round trip through predict)."""
    import json

    from microfer.learn.evaluate import LosoSettings
    from microfer.learn.train import train_bundle

    _, out, _, _ = broken_cache
    settings = LosoSettings(
        grid=tiny_grid,
        input_size=32,
        inner_splits=3,
        num_threads=1,
        feature_dir=str(tmp_path / "features"),
    )
    trained = train_bundle(
        "megc2019-composite", out, tmp_path / "bundle", settings=settings, progress=False
    )
    doc = json.loads((trained.bundle / "bundle.json").read_text())
    assert doc["prepare"]["flow_format"] == "minmax28" and doc["prepare"]["flow"] == "tvl1"
    assert doc["representation"]["representations"] == ["flow"]  # the onset_apex set dropped
    assert doc["representation"]["source"] == "composite_inputs"


def test_a_folder_without_the_layout_is_one_clear_error(tmp_path):
    (tmp_path / ci.APEX_DIR).mkdir()
    with pytest.raises(MicroferError, match=ci.FLOW_DIR):
        ci.read_table(tmp_path)
    assert os.listdir(tmp_path) == [ci.APEX_DIR]
