"""train -> bundle -> predict, and the embedded demo (quick), end to end on synthetic clips."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner


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
    from microfer.clip.prepare import PrepareSettings, prepare_clip
    from microfer.clip.video import open_frames
    from microfer.learn.features import extract_features
    from microfer.learn.train import train_bundle
    from microfer.recognise.predict import Predictor

    trained = train_bundle(
        "megc2019-composite",
        demo.out / "cache" / PrepareSettings().key(),
        tmp_path / "b",
        manifest=demo.out / "manifest.csv",
        progress=False,
    )
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
        np.testing.assert_allclose(
            predictor.bundle.classifier.decision_function(predictor.features(prepared)),
            _ovo(trained.choice.model, feats),
            atol=1e-6,
        )


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


def test_spotting_then_predict_gives_what_it_gave_before_the_face_was_followed(demo, monkeypatch):
    """The cuts to predict's own spotting (face checks by tracking instead of detection, the
    scan's face box reused on a re-spotted onset, a straight-through read by OpenCV instead
    of decord's batch) change no prediction: the same onset/apex/offset, label and scores
    as with every check detected and every frame decoded by decord, as before them."""
    import microfer.clip.one_clip as one_clip
    from microfer.clip import video_file
    from microfer.recognise.predict import Predictor

    predictor = Predictor(demo.bundle)
    videos = [p["video"] for p in demo.predictions]
    now = [predictor.predict(v) for v in videos]
    monkeypatch.setattr(one_clip, "same_face", lambda *a: False)
    monkeypatch.setattr(one_clip, "apex_face_held", lambda *a: False)
    monkeypatch.setattr(video_file, "_without_seeking", lambda indices: False)
    for video, new in zip(videos, now):
        old = predictor.predict(video)
        assert (new.onset, new.apex, new.offset, new.label, new.scores, new.notes) == (
            old.onset,
            old.apex,
            old.offset,
            old.label,
            old.scores,
            old.notes,
        ), video


def test_predict_cli_json(demo):
    video = demo.predictions[0]["video"]
    r = _run(["predict", video, "--model", str(demo.bundle), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["label"] in doc["scores"]
    assert set(doc["spotted"]) == {"onset", "apex", "offset"} and doc["given"] == []
    assert {"decode", "detect", "flow", "network", "svm"} <= set(doc["timings_ms"])
    assert doc["onset"] < doc["apex"] <= doc["offset"]
    # the demo bundle carries a calibrator: probabilities of every class, summing to 1
    probs = doc["probabilities"]
    assert set(probs) == set(doc["scores"]) and abs(sum(probs.values()) - 1) < 1e-3
    assert all(0 <= v <= 1 for v in probs.values()) and doc["probability_kind"].startswith("calib")
    text = _run(["predict", video, "--model", str(demo.bundle)])
    assert "probabilities: " in text.output and "(calibrated)" in text.output


def test_bundle_from_before_calibration_still_predicts(demo, tmp_path):
    """A format-version-2 bundle (no calibrator) loads and predicts; it says it has no
    probabilities."""
    import shutil

    from microfer.learn.bundle import file_sha256, integrity_digest
    from microfer.recognise.predict import Predictor

    old = tmp_path / "old"
    shutil.copytree(demo.bundle, old)
    (old / "calibrator.safetensors").unlink()
    doc = json.loads((old / "bundle.json").read_text())
    doc.pop("calibration")
    doc["files"].pop("calibrator.safetensors")
    doc["format_version"] = 2
    doc["integrity"]["content"] = integrity_digest(
        doc, {n: file_sha256(old / n) for n in doc["files"]}
    )
    (old / "bundle.json").write_text(json.dumps(doc))
    video = demo.predictions[0]["video"]
    before, now = Predictor(old).predict(video), Predictor(demo.bundle).predict(video)
    assert before.label == now.label and before.scores == now.scores
    assert before.probabilities is None and now.probabilities is not None
    assert "probabilities: none" in before.text()
    assert before.to_dict()["probability_kind"].startswith("none")


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


@pytest.fixture(scope="module")
def network_bundle(demo, tmp_path_factory):
    """A bundle whose features come from a network (the demo's default grid picks a descriptor)."""
    from microfer.clip.prepare import PrepareSettings
    from microfer.learn.evaluate import LosoSettings
    from microfer.learn.train import train_bundle

    settings = LosoSettings(features=("mobilevit_xxs/apex/final/avg",))
    return train_bundle(
        "megc2019-composite",
        demo.out / "cache" / PrepareSettings().key(),
        tmp_path_factory.mktemp("nb") / "bundle",
        manifest=demo.out / "manifest.csv",
        settings=settings,
        progress=False,
    ).bundle


def test_network_bundle_predicts_the_same_in_onnxruntime_as_in_torch(demo, network_bundle):
    from microfer.recognise.predict import Predictor

    cfg = json.loads((network_bundle / "bundle.json").read_text())
    assert "network.onnx" in cfg["files"]
    onnx, torch_ = (
        Predictor(network_bundle, runtime="onnx"),
        Predictor(network_bundle, runtime="torch"),
    )
    assert (onnx.runtime, torch_.runtime) == ("onnx", "torch")
    truth = pd.read_csv(demo.out / "heldout" / "synth_truth.csv", dtype=str, keep_default_na=False)
    for row in truth.to_dict("records"):
        video = demo.out / "heldout" / row["frame_dir"]
        for frames in ({}, {k: int(row[k]) for k in ("onset", "apex", "offset")}):
            a, b = onnx.predict(video, **frames), torch_.predict(video, **frames)
            assert a.label == b.label and (a.onset, a.apex, a.offset) == (b.onset, b.apex, b.offset)
            assert a.scores.keys() == b.scores.keys()
            np.testing.assert_allclose(list(a.scores.values()), list(b.scores.values()), atol=2e-4)


def test_predict_from_the_shell_imports_neither_torch_nor_timm(demo, network_bundle):
    import subprocess
    import sys

    code = (
        "import runpy, sys, json\n"
        "sys.argv = ['microfer', 'predict', sys.argv[1], '--model', sys.argv[2], '--json']\n"
        "try:\n    runpy.run_module('microfer', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print(json.dumps(sorted(m for m in ('torch', 'timm', 'torchvision', 'scipy.ndimage', 'pandas') "
        "if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(demo.predictions[0]["video"]), str(network_bundle)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert '"label"' in out.stdout


def test_runtime_onnx_needs_the_export_and_tampered_exports_are_refused(
    demo, network_bundle, tmp_path, capsys
):
    import shutil

    from microfer.errors import BundleError
    from microfer.learn.bundle import load_bundle, save_bundle
    from microfer.recognise.predict import Predictor

    b = load_bundle(network_bundle)
    config = {k: v for k, v in b.config.items() if k not in ("files", "integrity")}
    old = save_bundle(
        tmp_path / "old", network_state=b.network, classifier=b.classifier, config=config
    )
    assert not list(old.glob("*.onnx"))
    with pytest.raises(BundleError, match="network.onnx"):
        Predictor(old, runtime="onnx")
    assert Predictor(old).runtime == "torch"  # auto falls back on a bundle without the export

    copy = tmp_path / "tampered"
    shutil.copytree(network_bundle, copy)
    data = bytearray((copy / "network.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "network.onnx").write_bytes(bytes(data))
    code, err = _main(["predict", demo.predictions[0]["video"], "--model", str(copy)], capsys)
    assert code == 2 and len(err) == 1 and "network.onnx" in err[0] and "checksum" in err[0]


def test_ood_score_flags_a_noisy_clip_but_not_the_held_out_ones(demo):
    """The bundle's OOD score: held-out synthetic clips (new identities) pass, the same clip
    under heavy sensor noise is flagged, and its label is kept but marked."""
    from microfer.bench.ood_eval import read_all_frames, sensor_noise
    from microfer.recognise.predict import Predictor

    predictor = Predictor(demo.bundle)
    assert predictor.bundle.ood is not None
    clean = [predictor.predict(p["video"]) for p in demo.predictions]
    assert not any(p.ood for p in clean), [p.ood_score for p in clean]
    rng = np.random.default_rng(0)
    noisy = predictor.predict(
        [sensor_noise(f, rng) for f in read_all_frames(demo.predictions[0]["video"])]
    )
    assert noisy.ood and noisy.ood_score > max(p.ood_score for p in clean)
    assert noisy.label in noisy.scores and "OUT OF DISTRIBUTION" in noisy.text().splitlines()[0]
    doc = noisy.to_dict()
    assert doc["ood"] is True and doc["ood_score"] > doc["ood_threshold"]


def test_bundle_without_ood_predicts_with_no_score(demo, tmp_path):
    from microfer.learn.bundle import load_bundle, save_bundle
    from microfer.recognise.predict import Predictor

    b = load_bundle(demo.bundle)
    old = save_bundle(
        tmp_path / "old",
        network_state=b.network,
        classifier=b.classifier,
        config=b.config,
        onnx={n: p.read_bytes() for n, p in b.onnx.items()},
    )
    p = Predictor(old).predict(demo.predictions[0]["video"])
    assert p.ood_score is None and p.ood is None and "no score" in p.text()


def test_explain_writes_overlays_of_the_apex_face_and_the_flow(demo, tmp_path):
    from microfer.recognise.explain import OVERLAY_SIZE

    p = _run(
        [
            "predict",
            demo.predictions[1]["video"],
            "--model",
            str(demo.bundle),
            "--explain",
            str(tmp_path / "why"),
            "--json",
        ]
    )
    assert p.exit_code == 0, p.output
    doc = json.loads(p.output)
    assert sorted(doc["explanation"]) == sorted(
        str(tmp_path / "why" / n) for n in ("apex_face.png", "flow.png")
    )
    for name in doc["explanation"]:
        assert cv2.imread(name).shape == (OVERLAY_SIZE, OVERLAY_SIZE, 3)


def _held_out_prepared(demo, i=1):
    from microfer.clip.prepare import PrepareSettings, prepare_clip
    from microfer.clip.video import open_frames

    row = pd.read_csv(
        demo.out / "heldout" / "synth_truth.csv", dtype=str, keep_default_na=False
    ).iloc[i]
    return prepare_clip(
        open_frames(demo.out / "heldout" / row["frame_dir"]),
        int(row["onset"]),
        int(row["apex"]),
        int(row["offset"]),
        PrepareSettings(),
    )


def test_masking_the_highlighted_region_changes_the_score_more_than_a_random_one(demo):
    """On a synthetic clip whose only motion is in a known region (the flow zeroed outside a
    box around the mouth), the map's peak lies on that region, and masking it changes the
    class score more than masking patches drawn at random."""
    import dataclasses

    from microfer.recognise.explain import class_score, network_inputs, occlude, occlusion_map
    from microfer.recognise.predict import Predictor

    predictor = Predictor(demo.bundle)
    prepared = _held_out_prepared(demo)
    s = prepared.flow.shape[0]
    region = (s // 4, s // 2, 3 * s // 4, 7 * s // 8)  # x0, y0, x1, y1: mouth and lip corners
    flow = np.zeros_like(prepared.flow)
    flow[region[1] : region[3], region[0] : region[2]] = prepared.flow[
        region[1] : region[3], region[0] : region[2]
    ]
    known = dataclasses.replace(
        prepared, flow=flow, strain=np.where(flow[..., 0] != 0, prepared.strain, 0)
    )
    label = int(predictor.bundle.classifier.predict(predictor.features(known))[0])
    occ = occlusion_map(predictor.feature_model, predictor.bundle.classifier, known, label)
    assert occ.heat.shape == (s, s)
    x0, y0, x1, y1 = occ.top_box
    assert x0 < region[2] and x1 > region[0] and y0 < region[3] and y1 > region[1], (
        occ.top_box,
        region,
    )

    inputs = network_inputs(predictor.feature_model, known)
    base = occ.base_score

    def change(box):
        return abs(
            base
            - class_score(
                predictor.feature_model, predictor.bundle.classifier, occlude(inputs, box), label
            )[0]
        )

    rng = np.random.default_rng(0)
    corners = rng.integers(0, s - occ.patch + 1, size=(20, 2))
    random_change = np.mean([change((x, y, x + occ.patch, y + occ.patch)) for x, y in corners])
    assert change(occ.top_box) > 2 * random_change
