"""The seed-split spotting evaluation: development and held-out seeds stay apart, and the
aggregation over seeds is right."""

from __future__ import annotations

import functools
import json
import statistics

import pytest

from microfer.bench.spot_seeds import (
    METRICS,
    aggregate,
    check_split,
    read_seed_run,
    run_seed,
    run_spot_seeds,
)
from microfer.errors import MicroferError
from microfer.synth.output import MARKER


def _fake_doc(f1: dict[str, float]) -> dict:
    """A spot-eval result whose every F1 of each method is f1[method] (+0.01 micro, -0.01 macro)."""
    metrics = {
        m: {
            t: {"f1": v + d, "precision": v, "recall": v}
            for t, d in (("overall", 0.0), ("micro", 0.01), ("macro", -0.01))
        }
        for m, v in f1.items()
    }
    return {
        "metrics": metrics,
        "n_subjects": 3,
        "n_videos": 3,
        "n_frames": 300,
        "n_intervals": {"micro": 3, "macro": 3},
        "failures": [],
    }


def _value(seed: int) -> float:
    # development seeds score 0.99 so that any leak into the held-out row shows
    return 0.99 if seed < 100 else seed / 1000


def _fake_run(calls, layout, seed, subjects, folder, progress=False):
    calls.append((layout, seed, subjects, folder.name))
    v = _value(seed)
    return _fake_doc(
        {"scored": v + 0.5, "spot": v, "threshold_baseline": v / 2, "spaced_baseline": v / 4}
    )


def test_split_must_be_disjoint_and_hold_out_something():
    check_split([1, 2], [101])
    with pytest.raises(MicroferError, match="both development and held-out"):
        check_split([1, 2], [2, 101])
    with pytest.raises(MicroferError, match="at least one held-out"):
        check_split([1], [])
    with pytest.raises(MicroferError, match="twice"):
        check_split([1, 1], [101])


def test_held_out_row_is_only_held_out_seeds_and_aggregation_is_right(tmp_path):
    calls = []
    doc = run_spot_seeds(
        ["casme_sq", "samm_lv"],
        tmp_path,
        dev=[1, 2],
        held_out=[101, 102, 104],
        subjects=3,
        progress=False,
        run_one=functools.partial(_fake_run, calls),
    )
    # every (layout, seed) ran once, in its own folder
    assert sorted((c[0], c[1]) for c in calls) == sorted(
        (la, s) for la in ("casme_sq", "samm_lv") for s in (1, 2, 101, 102, 104)
    )
    assert all(c[3] == f"seed-{c[1]}" and c[2] == 3 for c in calls)
    for la in ("casme_sq", "samm_lv"):
        held, dev = doc["summary"][la]["held_out"], doc["summary"][la]["dev"]
        assert held["seeds"] == [101, 102, 104] and held["n"] == 3
        assert dev["seeds"] == [1, 2] and dev["n"] == 2
        values = [0.101, 0.102, 0.104]
        m = held["metrics"]["spot/overall_f1"]
        assert m["values"] == pytest.approx(values)
        assert m["mean"] == pytest.approx(statistics.fmean(values))
        assert m["sd"] == pytest.approx(statistics.stdev(values))  # sample sd, n - 1
        assert (m["min"], m["max"]) == (pytest.approx(0.101), pytest.approx(0.104))
        assert held["metrics"]["spot/micro_f1"]["mean"] == pytest.approx(0.1023333 + 0.01)
        assert held["metrics"]["scored/overall_f1"]["mean"] == pytest.approx(0.1023333 + 0.5)
        assert held["metrics"]["threshold_baseline/macro_f1"]["mean"] == pytest.approx(
            statistics.fmean(v / 2 for v in values) - 0.01
        )
        # no development value (0.99 and what derives from it) anywhere in the held-out row
        for metric in METRICS:
            assert max(held["metrics"][metric]["values"]) < 0.7
        assert dev["metrics"]["spot/overall_f1"]["mean"] == pytest.approx(0.99)
        assert dev["metrics"]["spot/overall_f1"]["sd"] == pytest.approx(0.0)
    written = json.loads((tmp_path / "spot_seeds.json").read_text())
    assert written["split"] == {"dev": [1, 2], "held_out": [101, 102, 104]}
    table = (tmp_path / "spot_seeds.md").read_text()
    assert "held-out 101, 102, 104" in table and "development 1, 2" in table
    assert (tmp_path / "spot_seeds.png").stat().st_size > 0


def test_aggregate_refuses_a_record_of_the_other_role():
    rec = {"seed": 1, "role": "dev", "scores": {"spot/overall_f1": 0.9}}
    with pytest.raises(MicroferError, match="not held-out"):
        aggregate([rec], "held_out")
    one = aggregate([rec], "dev")["metrics"]["spot/overall_f1"]
    assert one["sd"] is None and one["mean"] == 0.9


def test_overlapping_split_runs_nothing(tmp_path):
    calls = []
    with pytest.raises(MicroferError):
        run_spot_seeds(
            ["casme_sq"],
            tmp_path,
            dev=[1],
            held_out=[1],
            run_one=functools.partial(_fake_run, calls),
            progress=False,
        )
    assert calls == []


def test_from_runs_aggregates_the_finished_runs_and_refuses_a_missing_one(tmp_path):
    for seed in (1, 101):
        doc = _fake_doc({"spot": _value(seed), "threshold_baseline": 0.0})
        doc.update(protocol="casme_sq-spotting", n_subjects=3)
        run = tmp_path / "casme_sq" / f"seed-{seed}" / "eval"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(doc))
    doc = run_spot_seeds(
        ["casme_sq"],
        tmp_path,
        dev=[1],
        held_out=[101],
        subjects=3,
        progress=False,
        run_one=read_seed_run,
    )
    assert doc["summary"]["casme_sq"]["held_out"]["metrics"]["spot/overall_f1"]["values"] == [
        pytest.approx(0.101)
    ]
    with pytest.raises(MicroferError, match="not casme_sq-spotting with 4"):
        read_seed_run("casme_sq", 1, 4, tmp_path / "casme_sq" / "seed-1")
    with pytest.raises(MicroferError, match="no finished spot-eval run of seed 102"):
        read_seed_run("casme_sq", 102, 3, tmp_path / "casme_sq" / "seed-102")


@pytest.mark.slow
def test_real_tiny_run_and_the_set_is_reused(tmp_path):
    """Generation + spot-eval for real, 2 subjects, one development and one held-out seed."""
    run_one = functools.partial(run_seed, frame_size=(480, 360), intervals=2)
    doc = run_spot_seeds(
        ["casme_sq"], tmp_path, dev=[1], held_out=[2], subjects=2, progress=False, run_one=run_one
    )
    records = {r["seed"]: r for r in doc["records"]}
    assert records[1]["role"] == "dev" and records[2]["role"] == "held_out"
    held = doc["summary"]["casme_sq"]["held_out"]["metrics"]["spot/overall_f1"]
    assert held["values"] == [records[2]["scores"]["spot/overall_f1"]]
    assert records[2]["n_subjects"] == 2
    # the two seeds are different sets
    truth = [(tmp_path / "casme_sq" / f"seed-{s}" / "data" / "synth_truth.csv") for s in (1, 2)]
    assert truth[0].read_text() != truth[1].read_text()
    # a rerun reuses the complete set rather than rendering it again
    marker = tmp_path / "casme_sq" / "seed-2" / "data" / MARKER
    before = marker.stat().st_mtime_ns
    run_one("casme_sq", 2, 2, tmp_path / "casme_sq" / "seed-2")
    assert marker.stat().st_mtime_ns == before


def test_false_positives_per_minute_and_background_videos_reach_each_run(tmp_path):
    """FP / min = false positives over the set's minutes at the layout's fps; the background
    videos and length are handed to every run and named in the report."""
    calls = []

    def run(layout, seed, subjects, folder, progress=False, **generation):
        calls.append(generation)
        doc = _fake_doc({"spot": _value(seed), "threshold_baseline": 0.1})
        doc["n_frames"] = 3600  # 2 minutes at 30 fps
        doc["metrics"]["spot"]["overall"]["fp"] = seed % 10  # 1 -> 0.5 / min, 3 -> 1.5 / min
        return doc

    video = tmp_path / "talk.mp4"
    doc = run_spot_seeds(
        ["casme_sq"],
        tmp_path,
        dev=[1],
        held_out=[3, 101],
        run_one=run,
        progress=False,
        backgrounds=[video],
        seconds=25.0,
    )
    assert calls == [{"backgrounds": [video], "seconds": 25.0}] * 3
    held = doc["summary"]["casme_sq"]["held_out"]["metrics"]["spot/fp_per_min"]
    assert held["values"] == [pytest.approx(1.5), pytest.approx(0.5)]
    dev = doc["summary"]["casme_sq"]["dev"]["metrics"]["spot/fp_per_min"]
    assert dev["values"] == [pytest.approx(0.5)]
    assert "threshold_baseline/fp_per_min" not in doc["summary"]["casme_sq"]["dev"]["metrics"]
    report = (tmp_path / "spot_seeds.md").read_text()
    assert "FP / min" in report and "talk.mp4" in report and "25.0 s a video" in report
