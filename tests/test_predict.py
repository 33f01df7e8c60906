"""train -> bundle -> predict, and the embedded demo (quick), end to end on synthetic clips."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner



@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from microfer.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo"), quick=True, seed=0, echo=None, progress=False)


def _run(args):
    """Invoke the CLI like the console script does (errors -> one line, exit 2)."""
    import microfer.cli as mcli

    runner = CliRunner()
    return runner.invoke(mcli.cli, args, standalone_mode=True, catch_exceptions=True)


def test_demo_writes_report_bundle_and_beats_majority(demo):
    for name in ("results.json", "report.md", "confusion.png", "per_subject.png"):
        assert (demo.report_dir / name).is_file()
    m = demo.loso_metrics
    assert m["pooled"]["uf1"] > m["majority"]["uf1"] + 0.2
    assert (demo.bundle / "bundle.json").is_file()
    assert len(demo.predictions) == 3
    # with the true onset/apex/offset the held-out videos are classified right
    assert sum(p["predicted_given"] == p["truth"] for p in demo.predictions) >= 2


def test_reloaded_bundle_predicts_like_the_in_memory_model(demo, tmp_path):
    from microfer.features import extract_features
    from microfer.predict import Predictor
    from microfer.prepare import PrepareSettings, prepare_clip
    from microfer.train import train_bundle
    from microfer.video import open_frames

    trained = train_bundle("megc2019-composite", demo.out / "cache" / PrepareSettings().key(), tmp_path / "b",
                           manifest=demo.out / "manifest.csv", progress=False)
    predictor = Predictor(trained.bundle)
    truth = pd.read_csv(demo.out / "heldout" / "synth_truth.csv", dtype=str, keep_default_na=False)
    classes = predictor.classes
    for row in truth.to_dict("records"):
        video = demo.out / "heldout" / row["frame_dir"]
        on, ap, off = int(row["onset"]), int(row["apex"]), int(row["offset"])
        prepared = prepare_clip(open_frames(video), on, ap, off, PrepareSettings())
        feats = extract_features([prepared], trained.feature_setting)
        in_memory = classes[int(trained.choice.model.predict(feats)[0])]
        reloaded = predictor.predict(video, onset=on, apex=ap, offset=off)
        assert reloaded.label == in_memory
        assert reloaded.given == ["onset", "apex", "offset"] and reloaded.spotted == []
        np.testing.assert_allclose(predictor.bundle.classifier.decision_function(predictor.features(prepared)),
                                   _ovo(trained.choice.model, feats), atol=1e-6)


def _ovo(pipeline, X):
    svc = pipeline.steps[-1][1]
    shape = svc.decision_function_shape
    svc.decision_function_shape = "ovo"
    try:
        d = pipeline.decision_function(X)
    finally:
        svc.decision_function_shape = shape
    return d if d.ndim == 2 else d[:, None]


def test_predict_spots_apex_when_frames_are_not_given(demo):
    for p in demo.predictions:
        assert abs(p["apex_spotted"] - p["apex_true"]) <= 4, p


def test_predict_cli_json(demo):
    video = demo.predictions[0]["video"]
    r = _run(["predict", video, "--model", str(demo.bundle), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["label"] in doc["scores"]
    assert set(doc["spotted"]) == {"onset", "apex", "offset"} and doc["given"] == []
    assert {"decode", "detect", "flow", "network", "svm"} <= set(doc["timings_ms"])
    assert doc["onset"] < doc["apex"] <= doc["offset"]


def _main(args, capsys):
    import sys

    from microfer.cli import main

    argv = sys.argv
    sys.argv = ["microfer", *args]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    err = capsys.readouterr().err.strip().splitlines()
    return exc.value.code, err


def test_predict_bad_inputs_give_one_line_errors(demo, tmp_path, capsys):
    bundle = str(demo.bundle)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video")
    code, err = _main(["predict", str(not_video), "--model", bundle], capsys)
    assert code == 2 and len(err) == 1 and "notes.mp4" in err[0]

    short = tmp_path / "short"
    short.mkdir()
    face = cv2.imread(str(next((demo.out / "data" / "casme2").rglob("*.jpg"))))
    for i in range(3):
        cv2.imwrite(str(short / f"img{i + 1}.jpg"), face)
    code, err = _main(["predict", str(short), "--model", bundle], capsys)
    assert code == 2 and len(err) == 1 and "3 frame(s)" in err[0]

    blank = tmp_path / "blank.avi"
    writer = cv2.VideoWriter(str(blank), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    for i in range(12):
        writer.write(np.full((240, 320, 3), 90 + i, np.uint8))
    writer.release()
    code, err = _main(["predict", str(blank), "--model", bundle], capsys)
    assert code == 2 and len(err) == 1 and "no face" in err[0]

    video = demo.predictions[0]["video"]
    code, err = _main(["predict", video, "--model", str(tmp_path)], capsys)
    assert code == 2 and len(err) == 1 and "not a microfer model bundle" in err[0]


def test_tampered_bundle_is_refused_by_predict(demo, tmp_path, capsys):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(demo.bundle, copy)
    data = bytearray((copy / "network.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "network.safetensors").write_bytes(bytes(data))
    code, err = _main(["predict", demo.predictions[0]["video"], "--model", str(copy)], capsys)
    assert code == 2 and "checksum" in err[0]


def test_top_level_python_api(demo):
    import microfer

    p = microfer.predict(demo.predictions[0]["video"], model=demo.bundle)
    assert p.label == demo.predictions[0]["predicted_spotted"]
