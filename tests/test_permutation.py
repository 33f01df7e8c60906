import json

import numpy as np
import pandas as pd
import pytest

from microfer.errors import MicroferError
from microfer.learn.evaluate import leave_one_group_out
from microfer.learn.permutation import permutation_test, permute_labels

# one linear candidate keeps a whole nested LOSO at a few dozen tiny SVC fits
TINY_GRID = {"kernel": ["linear"], "C": [1.0], "class_weight": ["balanced"]}


def tiny_set(
    signal: float, seed: int = 0, n_subjects: int = 4, per_class: int = 3, n_features: int = 4
):
    """3 balanced classes per subject; `signal` shifts two features by class (0 = pure noise)."""
    rng = np.random.default_rng(seed)
    y = np.tile(np.repeat(np.arange(3), per_class), n_subjects)
    groups = np.repeat([f"casme2/s{i}" for i in range(n_subjects)], 3 * per_class)
    X = rng.normal(size=(y.size, n_features))
    X[:, 0] += signal * y
    X[:, 1] -= signal * (y == 1)
    return {"f": X}, y, groups


def run(signal, n, seed=0, n_jobs=1, data_seed=0, **kw):
    sets, y, g = tiny_set(signal, data_seed)
    return permutation_test(
        sets,
        y,
        g,
        leave_one_group_out(g),
        param_grid=TINY_GRID,
        inner_splits=3,
        n_classes=3,
        n_permutations=n,
        seed=seed,
        n_jobs=n_jobs,
        **kw,
    )


@pytest.fixture(scope="module")
def strong():
    return run(signal=3.0, n=9)


def test_permutation_keeps_each_stratum_label_multiset():
    y = np.array([0, 0, 0, 1, 1, 2, 0, 1, 1, 1, 2, 2])
    strata = np.array(["casme2"] * 6 + ["samm"] * 6)
    seen = set()
    for i in range(20):
        p = permute_labels(y, strata, np.random.default_rng(i))
        for s in ("casme2", "samm"):
            assert sorted(p[strata == s]) == sorted(y[strata == s])
        seen.add(tuple(p))
        q = permute_labels(y, None, np.random.default_rng(i))
        assert sorted(q) == sorted(y)
    assert len(seen) > 10  # it does shuffle
    with pytest.raises(MicroferError, match="one stratum per sample"):
        permute_labels(y, strata[:3], np.random.default_rng(0))


def test_strong_signal_reaches_the_minimum_p_and_a_null_far_below(strong):
    for m in ("uf1", "uar"):
        assert strong.real[m] > 0.8
        assert strong.p_value[m] == pytest.approx(1 / 10)  # its minimum, 1 / (N + 1)
        assert strong.null_mean[m] < strong.real[m] - 0.4
        assert strong.null[m].shape == (9,) and strong.null_p95[m] < strong.real[m]
    assert strong.strata is None


def test_deterministic_for_a_seed_whatever_n_jobs_and_n(strong):
    # permutation i does not depend on N, so the first 3 of the 9 must come back, from 2 workers
    again = run(signal=3.0, n=3, n_jobs=2, real=strong.real)
    for m in ("uf1", "uar"):
        np.testing.assert_array_equal(again.null[m], strong.null[m][:3])
    y, strata = tiny_set(0.0)[1], None

    def draws(seed):
        return [
            permute_labels(y, strata, np.random.default_rng(s))
            for s in np.random.SeedSequence(seed).spawn(3)
        ]

    assert all(np.array_equal(a, b) for a, b in zip(draws(0), draws(0)))
    assert not all(np.array_equal(a, b) for a, b in zip(draws(0), draws(1)))


def test_no_signal_null_sits_around_the_real_score_and_p_is_large():
    res = run(signal=0.0, n=19, data_seed=1)
    for m in ("uf1", "uar"):
        spread = float(res.null[m].std())
        assert abs(res.null_mean[m] - res.real[m]) < 2 * spread
        assert res.p_value[m] > 0.05


def test_bad_requests_are_one_line_errors():
    with pytest.raises(MicroferError, match="at least 1 permutation"):
        run(signal=0.0, n=0)
    with pytest.raises(MicroferError, match="seed must be an integer >= 0"):
        run(signal=0.0, n=2, seed=-1)


# ---------------------------------------------------------------------------- through run_loso / CLI
@pytest.fixture
def tiny_loso(monkeypatch):
    """run_loso on tiny arrays: gather_features replaced, two datasets pooled with different class mixes."""
    import microfer.learn.evaluate as ev
    from microfer.learn.features import FeatureSetting
    from microfer.learn.protocols import load_protocol

    sets, y, _ = tiny_set(3.0, n_subjects=6)
    X = sets["f"]
    keep = np.ones(y.size, bool)
    keep[(np.arange(y.size) >= 27) & (y == 2)] = False  # the second dataset has no class 2
    X, y = X[keep], y[keep]
    n = y.size
    subj = np.repeat(np.arange(6), 9)[keep]
    datasets = np.where(subj < 3, "casme2", "samm")
    samples = pd.DataFrame(
        {
            "dataset": datasets,
            "subject": [f"s{s}" for s in subj],
            "clip": [f"c{i}" for i in range(n)],
            "key": [f"k{i}" for i in range(n)],
            "emotion": "x",
            "label": "x",
            "y": y,
        }
    )
    samples["group"] = samples["dataset"] + "/" + samples["subject"]
    fs = FeatureSetting(representation="flow", layer="stage4", pool="grid2", input_size=64)
    proto = load_protocol("casme2-5class")

    def fake_gather(protocol, cache, manifest=None, settings=None, progress=True):
        return ev.ProtocolFeatures(
            protocol=proto,
            samples=samples,
            excluded=pd.DataFrame(columns=["dataset", "subject", "clip", "group", "reason"]),
            n_candidates=n,
            y=y,
            groups=samples["group"].to_numpy(),
            classes=list(proto.classes),
            feature_settings=[fs],
            feature_sets={fs.name: X},
            prepare_settings={},
        )

    monkeypatch.setattr(ev, "gather_features", fake_gather)
    monkeypatch.setitem(ev.PARAM_GRIDS, "small", TINY_GRID)
    return samples


def test_run_loso_without_permutations_reports_none(tiny_loso, tmp_path):
    from microfer.learn.evaluate import LosoSettings, run_loso
    from microfer.learn.report import write_report

    (tmp_path / "permutation_null.png").write_bytes(b"stale")
    result = run_loso(
        "casme2-5class", tmp_path, settings=LosoSettings(inner_splits=3), progress=False
    )
    assert result.permutation is None and "permutation" not in result.metrics
    assert "permutations_s" not in result.timings
    paths = write_report(result, tmp_path)
    assert "permutation" not in paths and not (tmp_path / "permutation_null.png").exists()
    assert "permutation null" not in paths["report"].read_text()


def test_loso_command_reports_the_null_beside_the_majority_baseline(tiny_loso, tmp_path):
    from click.testing import CliRunner

    from microfer.cli import cli

    out = tmp_path / "run"
    res = CliRunner().invoke(
        cli,
        [
            "loso",
            "--protocol",
            "casme2-5class",
            "--cache",
            str(tmp_path),
            "--out",
            str(out),
            "--jobs",
            "1",
            "--inner-splits",
            "3",
            "--permutations",
            "4",
            "--permutation-seed",
            "7",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "permutation null (N=4, labels permuted within casme2, samm, seed 7)" in res.output
    assert (
        "UF1  null mean" in res.output and "p 0.2000" in res.output
    )  # strong signal: p = 1 / (4 + 1)
    doc = json.loads((out / "results.json").read_text())
    perm = doc["metrics"]["permutation"]
    assert doc["settings"]["permutations"] == 4 and doc["settings"]["permutation_seed"] == 7
    assert (
        perm["n_permutations"] == 4 and perm["seed"] == 7 and perm["strata"] == ["casme2", "samm"]
    )
    assert perm["metrics"]["uf1"]["real"] == pytest.approx(
        doc["metrics"]["pooled"]["uf1"], abs=1e-6
    )
    assert len(perm["metrics"]["uar"]["null"]) == 4 and perm["metrics"]["uar"][
        "p_value"
    ] == pytest.approx(0.2)
    report = (out / "report.md").read_text()
    assert "| permutation null (N=4), mean |" in report and "majority baseline" in report
    assert "## Chance level (permutation test)" in report
    assert (out / "permutation_null.png").stat().st_size > 0
    assert "permutations_s" in doc["timings"]

    refused = CliRunner().invoke(
        cli,
        ["loso", "--protocol", "casme2-5class", "--cache", str(tmp_path), "--permutations", "-1"],
    )
    assert refused.exit_code == 2 and "--permutations" in refused.output
