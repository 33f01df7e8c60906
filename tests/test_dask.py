"""`--scheduler`: clips, folds, permutations and train's grid search on a dask.distributed
cluster (a LocalCluster of 2 worker processes here) give what a local run gives; without
it dask is never imported."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("distributed")

from test_permutation import TINY_GRID, tiny_loso, tiny_set  # noqa: E402,F401,F811  (tiny_loso: a fixture)


def _results(path):
    doc = json.loads(path.read_text())
    doc.pop("timings")
    return json.dumps(doc, sort_keys=True)


def test_loso_on_a_local_cluster_equals_the_local_run(tiny_loso, tmp_path):  # noqa: F811  (the fixture)
    from click.testing import CliRunner

    from microfer.cli import cli

    common = [
        "loso",
        "--protocol",
        "casme2-5class",
        "--cache",
        str(tmp_path),
        "--inner-splits",
        "3",
        "--permutations",
        "3",
        "--permutation-seed",
        "5",
        "--jobs",
        "1",
    ]  # --jobs: unused on a cluster
    here = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "here")])
    assert here.exit_code == 0, here.output
    there = CliRunner().invoke(
        cli, [*common, "--out", str(tmp_path / "there"), "--scheduler", "local"]
    )
    assert there.exit_code == 0, there.output
    assert _results(tmp_path / "there" / "results.json") == _results(
        tmp_path / "here" / "results.json"
    )
    assert (
        "scheduler" not in json.loads((tmp_path / "there" / "results.json").read_text())["settings"]
    )

    # train's grid search: its candidates scored on the cluster, the same choice and scores
    from microfer.learn.classify import select_and_fit
    from microfer.parallel import scheduler_context

    sets, y, g = tiny_set(1.0, n_subjects=4)
    sets = {"a": sets["f"], "b": sets["f"][:, :2]}
    grid = {**TINY_GRID, "C": [0.1, 1.0, 10.0]}
    local = select_and_fit(
        sets, y, g, np.arange(y.size), inner_splits=3, param_grid=grid, n_classes=3
    )
    with scheduler_context("local"):
        remote = select_and_fit(
            sets, y, g, np.arange(y.size), inner_splits=3, param_grid=grid, n_classes=3, n_jobs=-1
        )
    assert (remote.feature_name, remote.params, remote.scores) == (
        local.feature_name,
        local.params,
        local.scores,
    )


def test_prepare_on_a_local_cluster_writes_the_same_cache(tmp_path):
    from microfer.clip.cache import Cache
    from microfer.clip.prepare import PrepareSettings, prepare_dataset
    from microfer.datasets import get
    from microfer.synth import generate

    s = generate(
        "casme2",
        tmp_path / "synth",
        subjects=1,
        clips_per_subject=3,
        seed=2,
        apex_unknown=0.3,
        progress=False,
    )
    df = get("casme2").read(s.coding_file, root=s.root)
    settings = PrepareSettings()
    here = prepare_dataset(df, s.root, tmp_path / "here", settings, progress=False)
    there = prepare_dataset(
        df, s.root, tmp_path / "there", settings, progress=False, scheduler="local"
    )
    assert there.prepared == here.prepared == 3 and not there.failed
    a, b = (
        Cache.for_settings(tmp_path / "here", settings),
        Cache.for_settings(tmp_path / "there", settings),
    )
    assert (a.dir / "index.csv").read_text() == (b.dir / "index.csv").read_text()
    for key in a.index()["key"]:
        x, z = a.load(key), b.load(key)
        for name in (
            "onset_face",
            "apex_face",
            "flow",
            "strain",
            "landmarks",
            "transform",
            "motion_curve",
        ):
            np.testing.assert_array_equal(getattr(x, name), getattr(z, name))
        assert (x.apex, x.apex_source, x.notes) == (z.apex, z.apex_source, z.notes)


def test_a_run_without_scheduler_never_imports_dask(tmp_path):
    script = textwrap.dedent("""
        import sys
        import numpy as np, pandas as pd
        from click.testing import CliRunner
        import microfer.learn.evaluate as ev
        from microfer.cli import cli
        from microfer.learn.classify import select_and_fit
        from microfer.learn.features import FeatureSetting
        from microfer.learn.protocols import load_protocol

        for cmd in ("prepare", "loso", "train"):
            assert CliRunner().invoke(cli, [cmd, "--help"]).exit_code == 0
        rng = np.random.default_rng(0)
        y = np.tile(np.arange(3), 12)
        subj = np.repeat(np.arange(4), 9)
        X = rng.normal(size=(y.size, 3)) + y[:, None]
        samples = pd.DataFrame({"dataset": "casme2", "subject": [f"s{s}" for s in subj],
                                "clip": [f"c{i}" for i in range(y.size)], "key": [f"k{i}" for i in range(y.size)],
                                "emotion": "x", "label": "x", "y": y})
        samples["group"] = samples["dataset"] + "/" + samples["subject"]
        fs = FeatureSetting(representation="flow", layer="stage4", pool="grid2", input_size=64)
        proto = load_protocol("casme2-5class")
        ev.gather_features = lambda *a, **k: ev.ProtocolFeatures(
            protocol=proto, samples=samples, excluded=pd.DataFrame(columns=["dataset", "subject", "clip", "group",
                                                                            "reason"]),
            n_candidates=y.size, y=y, groups=samples["group"].to_numpy(), classes=list(proto.classes),
            feature_settings=[fs], feature_sets={fs.name: X}, prepare_settings={})
        ev.PARAM_GRIDS["small"] = {"kernel": ["linear"], "C": [1.0], "class_weight": ["balanced"]}
        r = ev.run_loso("casme2-5class", ".", settings=ev.LosoSettings(inner_splits=3, n_jobs=2, permutations=2),
                        progress=False)
        assert r.metrics["n_folds"] == 4
        select_and_fit({"f": X}, y, samples["group"].to_numpy(), np.arange(y.size), inner_splits=3)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
        assert not loaded, loaded
        print("ok")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
