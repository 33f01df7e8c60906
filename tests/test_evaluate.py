import json

import numpy as np
import pandas as pd
import pytest

from microfer.learn.evaluate import (
    FoldLeakError,
    LosoSettings,
    SimpleFold,
    check_folds,
    compute_metrics,
    evaluate_folds,
    feature_grid,
    leave_one_group_out,
    run_loso,
)
from microfer.learn.features import FeatureSetting, extract_features
from microfer.records import MANIFEST_COLUMNS, PreparedClip

EMOTIONS = ["happiness", "surprise", "disgust"]
# where on the face each class moves (rows y0:y1 as fractions) and which way (v sign)
PATTERNS = {0: (0.65, 0.85, -1.0), 1: (0.15, 0.35, -1.0), 2: (0.15, 0.35, 1.0)}


def synthetic_clip(cls: int, rng, size: int = 64) -> PreparedClip:
    """A PreparedClip whose class is encoded in the flow: region and direction of a movement."""
    face = rng.integers(60, 200, size=(size, size, 3), dtype=np.uint8)
    flow = rng.normal(0, 0.15, size=(size, size, 2)).astype(np.float32)
    f0, f1, sign = PATTERNS[cls]
    y0, y1 = int(f0 * size), int(f1 * size)
    flow[y0:y1, size // 5 : 4 * size // 5, 1] += sign * rng.uniform(0.4, 1.0)
    strain = (
        np.abs(np.gradient(flow[..., 0], axis=1)) + np.abs(np.gradient(flow[..., 1], axis=0))
    ).astype(np.float32)
    return PreparedClip(
        onset=10,
        apex=15,
        offset=20,
        apex_source="annotated",
        onset_face=face,
        apex_face=face.copy(),
        flow=flow,
        strain=strain,
        landmarks=np.zeros((68, 2), np.float32),
        transform=np.eye(2, 3, dtype=np.float32),
        face_box=(0, 0, size, size),
    )


def synthetic_set(n_subjects=5, per_class=3, seed=0, size=64):
    rng = np.random.default_rng(seed)
    clips, y, groups = [], [], []
    for s in range(n_subjects):
        for c in range(3):
            for _ in range(per_class):
                clips.append(synthetic_clip(c, rng, size))
                y.append(c)
                groups.append(f"casme2/sub{s + 1:02d}")
    return clips, np.array(y), np.array(groups)


@pytest.fixture(scope="module")
def features():
    clips, y, g = synthetic_set()
    fs = FeatureSetting(representation="flow", layer="stage4", pool="grid2", input_size=64)
    return {fs.name: extract_features(clips, fs)}, y, g


def test_check_folds_refuses_a_subject_in_train_and_test():
    groups = np.array(["a", "a", "b", "b"])
    check_folds(leave_one_group_out(groups), groups)
    leaky = SimpleFold("a", train_idx=np.array([1, 2, 3]), test_idx=np.array([0]))
    with pytest.raises(FoldLeakError, match="subject"):
        check_folds([leaky], groups)
    with pytest.raises(FoldLeakError, match="empty"):
        check_folds([SimpleFold("a", np.array([2, 3]), np.array([], int))], groups)


def test_too_few_subjects_is_a_clear_error():
    from microfer.errors import MicroferError

    y, g = np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "b"])
    with pytest.raises(MicroferError, match="at least 3 subjects"):
        evaluate_folds({"f": np.eye(4)}, y, g, leave_one_group_out(g))


def test_loso_on_features_beats_chance_and_ignores_n_jobs(features):
    sets, y, g = features
    folds = leave_one_group_out(g)
    assert all(not set(g[f.train_idx]) & set(g[f.test_idx]) for f in folds)
    one = evaluate_folds(sets, y, g, folds, inner_splits=3, n_jobs=1)
    two = evaluate_folds(sets, y, g, folds, inner_splits=3, n_jobs=2)
    assert [r.y_pred for r in one] == [r.y_pred for r in two]
    assert [(r.feature_name, r.params) for r in one] == [(r.feature_name, r.params) for r in two]
    m = compute_metrics(y, one, EMOTIONS)
    assert m["n_tested"] == len(y) and m["n_folds"] == 5
    assert m["pooled"]["uf1"] > 0.8  # chance is about 0.33
    assert m["majority"]["uf1"] < 0.4


def test_feature_cache_is_reused_and_keyed_by_settings(tmp_path):
    clips, _, _ = synthetic_set(n_subjects=1, per_class=2)
    keys = [f"casme2/sub01/c{i}" for i in range(len(clips))]
    fs = FeatureSetting(representation="onset_apex", layer="mv2", input_size=64)
    first = extract_features(clips, fs, keys=keys, feature_dir=tmp_path, batch_size=4)

    class Refuse:
        def __call__(self, x):
            raise AssertionError("features should have come from the cache")

    again = extract_features(clips, fs, keys=keys, feature_dir=tmp_path, extractor=Refuse())
    assert np.array_equal(first, again)
    assert len(list((tmp_path / fs.key()).glob("*.npy"))) == len(clips)
    other = FeatureSetting(representation="onset_apex", layer="mv2", input_size=64, seed=1)
    assert other.key() != fs.key()
    assert not np.allclose(extract_features(clips, other, keys=keys, feature_dir=tmp_path), first)


def test_feature_cache_notices_a_re_prepared_clip(tmp_path):
    import os

    from microfer.clip.cache import Cache

    cache = Cache(tmp_path / "c", "k")
    clips, _, _ = synthetic_set(n_subjects=1, per_class=1)
    keys = [f"casme2/sub01/c{i}" for i in range(2)]
    for k, c in zip(keys, clips):
        cache.save(k, c)
    fs = FeatureSetting(representation="flow", layer="mv2", input_size=64)
    before = extract_features(cache, fs, keys=keys, feature_dir=tmp_path / "f")
    cache.save(keys[0], clips[2])  # prepared again, different content
    st = cache.entry_path(keys[0]).stat()
    os.utime(cache.entry_path(keys[0]), ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    after = extract_features(cache, fs, keys=keys, feature_dir=tmp_path / "f")
    assert not np.allclose(before[0], after[0]) and np.array_equal(before[1], after[1])


# ---------------------------------------------------------------------------- end to end
def _manifest_row(subject, clip, emotion):
    row = dict.fromkeys(MANIFEST_COLUMNS, "")
    row.update(
        dataset="casme2",
        subject=subject,
        clip=clip,
        onset="10",
        apex="15",
        offset="20",
        emotion=emotion,
        label=emotion,
        frame_template=f"{subject}/{clip}/img{{frame}}.jpg",
        fps="200",
    )
    return row


@pytest.fixture(scope="module")
def prepared_cache(tmp_path_factory):
    """A real prepare Cache of synthetic clips + a manifest with one failed and one unprepared clip."""
    from microfer.clip.cache import Cache

    root = tmp_path_factory.mktemp("cache")
    cache = Cache(root, "settingsA", {"note": "synthetic"})
    clips, y, groups = synthetic_set(n_subjects=5, per_class=3)
    rows = []
    for i, (c, cls, g) in enumerate(zip(clips, y, groups)):
        subject = g.split("/")[1]
        name = f"EP{i:02d}"
        cache.save(f"casme2/{subject}/{name}", c)
        rows.append(_manifest_row(subject, name, EMOTIONS[cls]))
    cache.record_failure("casme2/sub01/EPbad", "face", "no face found")
    rows.append(_manifest_row("sub01", "EPbad", "happiness"))
    rows.append(_manifest_row("sub02", "EPnever", "surprise"))
    rows.append(
        _manifest_row("sub02", "EPfear", "fear")
    )  # not a class of casme2-5class: not a sample at all
    cache.flush_index()
    manifest = root / "manifest.csv"
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(manifest, index=False)
    return root, manifest


def test_loso_end_to_end_through_cache_and_protocol(prepared_cache, tmp_path):
    from microfer.learn.report import write_report

    root, manifest = prepared_cache
    settings = LosoSettings(input_size=64, inner_splits=3, n_jobs=1)
    result = run_loso("casme2-5class", root, manifest=manifest, settings=settings, progress=False)
    assert len(result.samples) == 45 and len(result.folds) == 5
    assert result.metrics["excluded"]["count"] == 2 and result.metrics["excluded"]["of"] == 47
    reasons = dict(zip(result.excluded["clip"], result.excluded["reason"]))
    assert reasons["EPbad"] == "no face found" and "not prepared" in reasons["EPnever"]
    for f in result.folds:  # no subject on both sides, every sample tested once
        test_groups = set(result.samples["group"].iloc[f.test_idx])
        assert test_groups == {f.group}
    assert sorted(i for f in result.folds for i in f.test_idx) == list(range(45))
    assert result.metrics["pooled"]["uf1"] > 0.7  # 3 of the 5 classes occur; chance is about 0.33
    assert result.metrics["pooled"]["uf1"] > result.metrics["majority"]["uf1"] + 0.3
    # every single feature set cached once (a fusion would reuse its parts' files)
    singles = {part.key() for fs in feature_grid(settings) for part in fs.parts}
    assert len(list((root / "settingsA" / "features").glob("*/*.npy"))) == len(singles) * 45

    paths = write_report(result, tmp_path / "run1")
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    doc = json.loads(paths["results"].read_text())
    assert (
        doc["protocol"] == "casme2-5class" and doc["manifest_sha256"] and doc["versions"]["torch"]
    )
    assert len(doc["folds"]) == 5 and doc["folds"][0]["predictions"][0]["key"].startswith(
        "casme2/sub01/"
    )
    assert "majority baseline" in paths["report"].read_text()


def test_loso_command_twice_gives_identical_numbers(prepared_cache, tmp_path):
    from click.testing import CliRunner

    from microfer.cli import cli

    root, manifest = prepared_cache
    docs = []
    for run, jobs in (("a", "1"), ("b", "2")):
        out = tmp_path / run
        # run b extracts its features afresh (own feature dir) and runs folds in parallel
        res = CliRunner().invoke(
            cli,
            [
                "loso",
                "--protocol",
                "casme2-5class",
                "--cache",
                str(root / "settingsA"),
                "--manifest",
                str(manifest),
                "--out",
                str(out),
                "--jobs",
                jobs,
                "--input-size",
                "64",
                "--inner-splits",
                "3",
                "--feature-dir",
                str(tmp_path / f"features-{run}"),
            ],
        )
        assert res.exit_code == 3, res.output  # finished, written, but 2 samples excluded (listed)
        assert "excluded 1: no face found" in res.output and "incomplete: 2 of " in res.output
        doc = json.loads((out / "results.json").read_text())
        doc.pop("timings")
        doc["settings"].pop("feature_dir")
        doc["settings"].pop("n_jobs")
        docs.append(doc)
    assert docs[0] == docs[1]


def test_loso_refuses_unknown_cache_layout(tmp_path):
    from microfer.errors import MicroferError

    (tmp_path / "k1").mkdir()
    (tmp_path / "k1" / "index.csv").write_text("dataset\n")
    (tmp_path / "k2").mkdir()
    (tmp_path / "k2" / "index.csv").write_text("dataset\n")
    with pytest.raises(MicroferError, match="holds 2 prepare settings"):
        run_loso("casme2-5class", tmp_path, progress=False)


def test_pretrain_from_a_cache_then_loso_with_the_pretrained_block(prepared_cache, tmp_path):
    from click.testing import CliRunner

    from microfer.cli import cli
    from microfer.errors import MicroferError
    from microfer.learn.features import check_weights_fit
    from microfer.models.weights import read_block_meta

    root, manifest = prepared_cache  # stands in for a cache of macro clips
    weights = tmp_path / "w"
    res = CliRunner().invoke(
        cli,
        [
            "pretrain",
            "--cache",
            str(root),
            "--manifest",
            str(manifest),
            "--representation",
            "flow",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--input-size",
            "64",
            "--device",
            "cpu",
            "--out",
            str(weights),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "45 macro samples, 3 labels: disgust 15, happy 15, surprise 15" in res.output
    assert "skipped 1: failed in the cache" in res.output
    meta = read_block_meta(weights)
    assert meta["representation"] == "flow" and meta["n_samples"] == 45

    settings = LosoSettings(
        grid="network",
        input_size=64,
        inner_splits=3,
        block_weights=str(weights),
        feature_dir=str(tmp_path / "features"),
    )
    result = run_loso(
        "casme2-5class", root / "settingsA", manifest=manifest, settings=settings, progress=False
    )
    # the weights go to the network of their representation; the other one stays random
    assert [f["name"] for f in result.feature_sets] == [
        "mobilevit_xxs/flow/stage4/grid2/pre",
        "mobilevit_xxs/onset_apex/stage4/grid2",
    ]
    assert (
        result.feature_sets[0]["key"]
        != FeatureSetting(layer="stage4", pool="grid2", input_size=64).key()
    )
    assert result.metrics["pooled"]["uf1"] > 0.6
    with pytest.raises(MicroferError, match="pretrained on 'flow'"):
        check_weights_fit(FeatureSetting(representation="apex", block_weights=str(weights)))
