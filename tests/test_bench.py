"""`microfer bench`: what it computes and writes (never how fast: timings are not asserted)."""

import json
import re
import statistics
from dataclasses import asdict

import numpy as np
import pytest
from click.testing import CliRunner

from microfer.bench.suite import MODES, PREDICT_STAGES, bench_predict, stage_summary, write_results


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A valid bundle made in ~1 s: the untrained default network and an SVM fitted on random
    features. Its labels mean nothing; the bench times the path, not the answer."""
    from microfer.clip.prepare import PrepareSettings
    from microfer.learn.bundle import ArraySVM, save_bundle
    from microfer.learn.classify import make_svm
    from microfer.learn.features import FeatureSetting

    setting = FeatureSetting()
    extractor = setting.create_extractor(batch_size=1)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, extractor.feature_dim)).astype(np.float32)
    y = np.arange(12) % 3
    features = {k: v for k, v in asdict(setting).items() if k != "block_weights"}
    config = {
        "classes": ["negative", "positive", "surprise"],
        "prepare": asdict(PrepareSettings()),
        "features": {**features, "pretrained_block_sha256": None},
        "svm": {},
    }
    return save_bundle(
        tmp_path_factory.mktemp("bundle") / "tiny",
        network_state=extractor.state_dict(),
        classifier=ArraySVM.from_pipeline(make_svm().fit(X, y)),
        config=config,
        onnx={"network.onnx": extractor.to_onnx(PrepareSettings().size)},
    )


@pytest.fixture(scope="module")
def result(tiny_bundle):
    return bench_predict(
        tiny_bundle, runs=2, model_runs=3, feature_clips=5, batch_size=2, shell_runs=1
    )


def test_medians_come_from_the_runs():
    runs = [
        {"decode": 1.0, "flow": 5.0},
        {"decode": 3.0, "flow": 1.0},
        {"decode": 2.0, "flow": 100.0, "extra": 4.0},
    ]
    s = stage_summary(runs, walls=[10.0, 30.0, 20.0], cpus=[9.0, 8.0, 30.0])
    assert s["stages_ms"] == {
        "decode": 2.0,
        "flow": 5.0,
        "extra": 0.0,
    }  # a stage absent from a run counts 0
    assert s["total_ms"] == 20.0  # median of whole-call times, not the sum of stage medians (7)
    assert s["cpu_ms"] == 9.0 and s["cpu_runs_ms"] == [9.0, 8.0, 30.0]
    assert list(s["stages_ms"]) == ["decode", "flow", "extra"]  # pipeline order first


def test_bench_predict_times_every_stage_of_both_modes(result):
    assert (result["clip"]["frames"], result["clip"]["width"], result["clip"]["height"]) == (
        60,
        640,
        480,
    )
    assert result["clip"]["onset"] < result["clip"]["apex"] < result["clip"]["offset"] < 60
    for mode in MODES:
        r = result[mode]
        assert set(PREDICT_STAGES) <= set(r["stages_ms"])
        for stage, median in r["stages_ms"].items():
            assert median >= 0 and len(r["runs_ms"][stage]) == 2
            assert median == pytest.approx(statistics.median(r["runs_ms"][stage]))
        assert r["total_ms"] == pytest.approx(statistics.median(r["total_runs_ms"]))
        assert len(r["cpu_runs_ms"]) == 2 and r["cpu_ms"] == pytest.approx(
            statistics.median(r["cpu_runs_ms"])
        )
        # the whole call includes every stage it timed
        for total, i in zip(r["total_runs_ms"], range(2)):
            assert total >= sum(v[i] for v in r["runs_ms"].values()) - 0.05
    mp = result["model_path"]
    assert len(mp["runs_ms"]) == 3 and mp["median_ms"] == pytest.approx(
        statistics.median(mp["runs_ms"])
    )
    assert 0 < mp["median_ms"] <= min(result[m]["total_ms"] for m in MODES)
    feats = result["features"]
    assert feats["clips"] == 5 and feats["clips_per_s"] > 0 and feats["feature_dim"] > 0
    goals = result["goals"]
    assert goals["predict_ms"]["value"] == max(result[m]["total_ms"] for m in MODES)
    assert goals["predict_ms"]["met"] == (
        goals["predict_ms"]["value"] <= goals["predict_ms"]["goal"]
    )
    assert goals["model_path_ms"]["met"] == (mp["median_ms"] <= goals["model_path_ms"]["goal"])
    assert goals["in_process_given_ms"]["value"] == result["given"]["total_ms"]
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch_threads"] >= 1


def test_bench_runs_predict_from_the_shell_and_compares_it_with_torch(result):
    shell, goals = result["shell"], result["goals"]
    assert result["runtime"] == "onnx" and shell["runs"] == 1
    assert shell["median_s"] == shell["runs_s"][0] > 0 and 20 < shell["peak_mb"] < 5000
    assert shell["label"] in ("negative", "positive", "surprise")
    assert shell["same_as_torch"] is True  # onnxruntime in a new process vs torch in this one
    for name, value in (("shell_s", shell["median_s"]), ("shell_mb", shell["peak_mb"])):
        g = goals[name]
        assert g["value"] == value and g["ratio"] == pytest.approx(value / g["goal"])
        assert g["met"] == (value <= g["goal"])


def test_format_goals_lists_each_goal_with_ratio_and_verdict():
    from microfer.bench.suite import format_goals, goal_entry

    text = format_goals(
        {"a": goal_entry("fast thing", 3.0, 1.5, "s")},
        {"b": goal_entry("throughput ratio", 0.6, 0.5, "x", higher_is_better=True)},
    )
    assert re.search(r"fast thing +3\.00 s +goal <= 1\.5 s +ratio 2\.00  MISSED", text), text
    assert re.search(r"throughput ratio +0\.60 x +goal >= 0\.5 x +ratio 1\.20  met", text), text


def test_write_results_writes_json_and_png_atomically(result, tmp_path):
    paths = write_results(
        tmp_path / "out", predict=result, prepare={"clips": 2, "clips_per_s": 1.5}
    )
    doc = json.loads(paths["json"].read_text())
    assert doc["predict"]["given"]["stages_ms"] == result["given"]["stages_ms"]
    assert doc["prepare"]["clips_per_s"] == 1.5
    assert {"cpu_count", "torch_threads", "versions"} <= set(doc["machine"])
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "bench.json",
        "bench_stages.png",
    ]


def test_bench_cli_predict_with_a_model(tiny_bundle, tmp_path):
    import microfer.cli as mcli

    r = CliRunner().invoke(
        mcli.cli,
        [
            "bench",
            "predict",
            "--model",
            str(tiny_bundle),
            "--runs",
            "1",
            "--threads",
            "2",
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    for text in (
        "frames given",
        "all spotted",
        "35.4 ms/sample",
        "from the shell",
        "goals (measured in this run)",
    ):
        assert text in r.output
    assert re.search(
        r"model path .* [0-9.]+ ms +goal <= 15 ms +ratio [0-9.]+  (met|MISSED)", r.output
    ), r.output
    assert re.search(r"from the shell, peak memory +[0-9.]+ MB +goal <= 400 MB", r.output), r.output
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert (
        doc["predict"]["runs"] == 1
        and doc["machine"]["torch_threads"] == 2
        and "prepare" not in doc
    )
    assert (tmp_path / "bench_stages.png").is_file()


def test_bench_prepare_reads_synthetic_casme2_through_the_adapter():
    from microfer.bench.prepare import bench_prepare

    r = bench_prepare(
        workers=1, subjects=1, clips_per_subject=2, clip_frames=(24, 30), verbose=False
    )
    assert r["clips"] == 2 and r["failed"] == 0
    assert {"decode", "detect", "landmarks", "warp", "spot", "flow", "total"} <= set(r["ms"])
    assert r["ms"]["total"] == pytest.approx(sum(v for k, v in r["ms"].items() if k != "total"))
    assert r["clips_per_s"] > 0 and r["one_process_s_per_clip"] > 0
    bare = r["bare"]  # the bare dlib + DIS baseline ran on the same clips, same workers
    assert bare["clips"] == 2 and bare["workers"] == 1 and bare["clips_per_s"] > 0
    goal = r["goals"]["prepare_vs_bare"]
    assert goal["goal"] == 0.5 and goal["value"] == pytest.approx(
        r["clips_per_s"] / bare["clips_per_s"]
    )
    assert goal["better"] == "higher" and goal["ratio"] == pytest.approx(goal["value"] / 0.5)
    assert goal["met"] == (goal["value"] >= 0.5) and r["ratio_to_bare"] == goal["value"]
    json.dumps(r)  # goes into bench.json as it is


def test_bare_baseline_flows_two_synthetic_clips(tmp_path):
    from microfer.bench.prepare import bare_pairs, bench_bare, format_prepare, synthetic_casme2
    from microfer.bench.suite import goal_entry

    samples = synthetic_casme2(
        tmp_path / "data", subjects=1, clips_per_subject=2, clip_frames=(24, 30)
    )
    pairs = bare_pairs(tmp_path / "data", samples)
    assert len(pairs) == 2 and all(a != b for a, b in pairs)
    r = bench_bare(pairs, workers=1, size=64, return_flows=True)
    assert r["clips"] == 2 and r["failed"] == 0 and r["clips_per_s"] > 0
    for flow in r["flows"]:
        assert flow.shape == (64, 64, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    prepare = {
        "clips": 2,
        "workers": 1,
        "clips_per_s": 1.0,
        "clips_per_s_steady": 1.5,
        "failed": 0,
        "ms": {"total": 1.0},
        "bare": r,
        "ratio_to_bare_steady": 0.4,
        "goals": {
            "prepare_vs_bare": goal_entry("prepare / bare", 0.3, 0.5, "x", higher_is_better=True)
        },
    }
    text = format_prepare(prepare)
    assert "bare dlib + DIS script" in text and re.search(
        r"ratio to the bare script: .* = 0\.30", text
    ), text


def test_bench_face_times_predict_of_a_face_image_in_a_new_process(tmp_path):
    """`microfer bench face`: the shipped image model from the shell, wall and peak memory,
    with the answer it gave (never how fast: that is the bench's output, not a test)."""
    import microfer.cli as mcli

    r = CliRunner().invoke(mcli.cli, ["bench", "face", "--runs", "1", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert re.search(r"\(no --model\) from the shell \(wall\) +[0-9.]+ s +goal <= 1 s", r.output)
    assert re.search(r"from the shell, peak memory +[0-9.]+ MB +goal <= 300 MB", r.output)
    doc = json.loads((tmp_path / "bench_face.json").read_text())
    shell = doc["shell"]
    assert (
        shell["runs"] == 1 and shell["median_s"] == shell["runs_s"][0] > 0 < shell["cpu_median_s"]
    )
    assert 20 < shell["peak_mb"] < 5000 and doc["image"].endswith("grace_hopper.jpg")
    assert shell["model"].endswith("fer_image_model.json")
    assert abs(sum(shell["probabilities"].values()) - 1) < 1e-6
    assert shell["label"] == max(shell["probabilities"], key=shell["probabilities"].get)


def test_bench_face_names_a_missing_image(tmp_path):
    from microfer.bench.face_predict import bench_face
    from microfer.errors import MicroferError

    with pytest.raises(MicroferError, match="nope.jpg: face image not found"):
        bench_face(tmp_path / "nope.jpg", runs=1)
