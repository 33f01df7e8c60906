"""The circulated STSTNet representation computed from frames; a bundle trained on
circulated-style inputs predicts clips; two-frame (onset/apex pair) inputs."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from microfer.errors import BundleError, ClipError

FLOW_ONLY = ["flow_grid7/flow"]
PARTS = (("casme2", "casme2", "casme2"), ("samm", "samm", "samm"), ("smic_hs", "smic", "smic"))


def _run(args):
    from click.testing import CliRunner

    import microfer.cli as mcli

    return CliRunner().invoke(mcli.cli, args, standalone_mode=True, catch_exceptions=True)


def _main(args, capsys):
    """The console script: (exit code, stdout lines, stderr lines)."""
    import sys

    from microfer.cli import main

    argv, code = sys.argv, 0
    sys.argv = ["microfer", *args]
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err.strip().splitlines()


# ------------------------------------------------------------------------- the recipe
def test_recipe_resizes_then_scales_each_channel_to_the_full_range():
    from microfer.clip.circulated import circulated_flow, circulated_image

    rng = np.random.default_rng(0)
    flow = rng.normal(0, 0.5, (128, 128, 2)).astype(np.float32)
    strain = np.abs(rng.normal(0, 0.05, (128, 128))).astype(np.float32)
    image = circulated_image(flow, strain)
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8
    # as in all 207 circulated files: every channel reaches 0 and 255
    assert (image.reshape(-1, 3).min(0) == 0).all() and (image.reshape(-1, 3).max(0) == 255).all()
    u01, s01 = circulated_flow(flow, strain)
    np.testing.assert_array_equal(np.rint(u01[..., 0] * 255), image[..., 0])
    np.testing.assert_array_equal(np.rint(s01 * 255), image[..., 2])
    # a scale or an offset of a channel is gone after the per-image min-max
    np.testing.assert_array_equal(circulated_image(flow * 3 + 1, strain * 2), image)
    flat = circulated_image(np.zeros_like(flow), strain)
    assert (flat[..., :2] == 0).all()


def test_the_default_prepare_key_is_unchanged_and_the_format_is_part_of_the_key():
    from microfer.clip.one_clip import PrepareSettings
    from microfer.errors import MicroferError

    # pinned: a new flow format must not move the default key; only a PREPARE_VERSION bump
    # does (prepare-5, tracked face presence and capped decode, made it 320d8f6187e8)
    assert PrepareSettings().key() == "320d8f6187e8"
    assert PrepareSettings(flow_format="minmax28").key() != PrepareSettings().key()
    assert PrepareSettings(flow_format="minmax28").flow_units == "minmax_per_image"
    with pytest.raises(MicroferError, match="unknown flow format 'png'"):
        PrepareSettings(flow_format="png")


# ------------------------------------------------------------------------- round trip
def _circulated_folder(cache, samples, out):
    """A folder laid out as the circulated composite inputs, made from a minmax28 cache."""
    from microfer.datasets import composite_inputs as ci

    (out / ci.APEX_DIR).mkdir(parents=True)
    (out / ci.FLOW_DIR).mkdir()
    rows = []
    names = {ds: short for ds, _, short in PARTS}
    for s in samples.to_dict("records"):
        clip = cache.load(s["key"])
        stem = f"{s['subject']}_{s['clip']}"
        apex = cv2.resize(clip.apex_face, (224, 224), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / ci.APEX_DIR / f"{stem}.jpg"), apex)
        rgb = np.rint(np.dstack([clip.flow, clip.strain]) * 255).astype(np.uint8)
        cv2.imwrite(str(out / ci.FLOW_DIR / f"{stem} .png"), rgb[..., ::-1])  # u,v,strain as RGB
        rows.append([names[s["dataset"]], s["subject"], s["clip"], s["y"], "", f"{stem}.jpg", ""])
    pd.DataFrame(rows, columns=list(ci.CSV_COLUMNS)).to_csv(out / ci.CSV_NAME, index=False)


@pytest.fixture(scope="module")
def round_trip(demo, tmp_path_factory):
    """Both representations prepared from the demo's frames, a circulated-style folder made
    from the minmax28 one, read by `prepare composite_inputs`, and a bundle trained on it."""
    from microfer.clip.cache import Cache
    from microfer.clip.prepare import PrepareSettings, prepare_dataset
    from microfer.learn.evaluate import LosoSettings, load_samples
    from microfer.learn.train import train_bundle

    tmp = tmp_path_factory.mktemp("circulated")
    settings = PrepareSettings(flow="tvl1", flow_format="minmax28")
    manifest = pd.read_csv(demo.out / "manifest.csv", dtype=str, keep_default_na=False)
    for dataset, folder, _ in PARTS:
        rows = manifest[manifest["dataset"] == dataset]
        prepare_dataset(rows, demo.out / "data" / folder, tmp / "cache", settings, progress=False)
    cache = Cache(tmp / "cache", settings.key())
    proto, samples = load_samples("megc2019-composite", demo.out / "manifest.csv")
    samples["key"] = samples["dataset"] + "/" + samples["subject"] + "/" + samples["clip"]
    classed = manifest.copy()  # the composite manifest holds the class in `label`
    classed["label"] = [
        proto.classes[int(y)]
        for y in samples.set_index("key").loc[
            classed["dataset"] + "/" + classed["subject"] + "/" + classed["clip"], "y"
        ]
    ]
    classed.to_csv(tmp / "composite.csv", index=False)
    _circulated_folder(cache, samples, tmp / "inputs")
    res = _run(
        ["prepare", "composite_inputs", "--root", str(tmp / "inputs"), "--out", str(tmp / "C")]
        + ["--manifest", str(tmp / "composite.csv"), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    loso = LosoSettings(features=tuple(FLOW_ONLY), inner_splits=2, num_threads=1)
    trained = train_bundle(
        "megc2019-composite",
        tmp / "C",
        tmp / "bundle",
        manifest=tmp / "composite.csv",
        settings=loso,
        progress=False,
    )
    return tmp, cache, samples, trained


def test_prepare_makes_the_circulated_representation_from_frames(demo, round_trip):
    from microfer.clip.cache import Cache
    from microfer.clip.prepare import PrepareSettings

    _, cache, samples, _ = round_trip
    pixels = Cache(demo.out / "cache", PrepareSettings().key())
    key = samples["key"].iloc[0]
    small, big = cache.load(key), pixels.load(key)
    assert small.flow_units == "minmax_per_image" and small.flow.shape == (28, 28, 2)
    assert big.flow_units == "pixels" and big.flow.shape == (128, 128, 2)
    assert small.strain.min() == 0 and small.strain.max() == 1


def test_a_bundle_trained_on_circulated_inputs_predicts_clips_from_frames(demo, round_trip):
    from microfer.clip.prepare import prepare_clip
    from microfer.clip.video import open_frames
    from microfer.learn.features import extract_features
    from microfer.recognise.predict import Predictor

    tmp, cache, samples, trained = round_trip
    doc = json.loads((trained.bundle / "bundle.json").read_text())
    assert doc["prepare"]["flow_format"] == "minmax28" and doc["prepare"]["flow"] == "tvl1"
    rep = doc["representation"]
    assert rep["flow_units"] == "minmax_per_image" and rep["source"] == "composite_inputs"
    assert rep["representations"] == ["flow"] and "ood" in doc
    predictor = Predictor(trained.bundle)
    # a training clip, prepared from its frames by predict's settings, gives the features
    # of its circulated-style entry: one representation on both sides
    s = samples.iloc[0]
    folder = {ds: f for ds, f, _ in PARTS}[s["dataset"]]
    root = demo.out / "data" / folder
    frames = open_frames(root / str(s["frame_template"]).rsplit("/", 1)[0])
    on, ap, off = int(s["onset"]), int(s["apex"]), int(s["offset"])
    mine = prepare_clip(frames, on, ap, off, predictor.prepare_settings, strict_apex=True)
    from microfer.clip.cache import Cache

    entry = Cache(tmp / "C", _only_key(tmp / "C")).load(s["key"])
    np.testing.assert_allclose(
        predictor.features(mine), extract_features([entry], trained.feature_setting), atol=1e-5
    )
    # and the held-out videos are answered, spotted or given
    truth = pd.read_csv(demo.out / "heldout" / "synth_truth.csv", dtype=str)
    row = truth.iloc[0]
    video = next((demo.out / "heldout" / "clips").glob(f"{row['clip']}.*"), None)
    video = video or demo.out / "heldout" / row["frame_dir"]
    given = predictor.predict(
        video, onset=int(row["onset"]), apex=int(row["apex"]), offset=int(row["offset"])
    )
    spotted = predictor.predict(video)
    assert given.label in predictor.classes and spotted.label in predictor.classes
    assert given.ood_score is not None


def _only_key(root):
    (key,) = [p.name for p in root.iterdir() if (p / "settings.json").is_file()]
    return key


def _rewritten(bundle_dir, out, edit):
    """The bundle re-saved with its bundle.json edited (a valid bundle, another config)."""
    from microfer.learn.bundle import load_bundle, save_bundle

    b = load_bundle(bundle_dir)
    config = json.loads(json.dumps(b.config))
    edit(config)
    return save_bundle(
        out, network_state=b.network, classifier=b.classifier, config=config, ood=b.ood
    )


def test_predict_refuses_a_bundle_whose_representation_the_clip_cannot_give(
    demo, round_trip, tmp_path, capsys
):
    from microfer.recognise.predict import Predictor

    _, _, _, trained = round_trip

    def pixels(config):
        config["prepare"]["flow_format"] = "pixels"

    def apex(config):
        config["representation"]["representations"] = ["flow", "apex"]

    bad = _rewritten(trained.bundle, tmp_path / "pixels", pixels)
    with pytest.raises(BundleError, match="reads flow in 'minmax_per_image' units but"):
        Predictor(bad)
    with pytest.raises(BundleError, match="reads 'apex' inputs as composite_inputs made them"):
        Predictor(_rewritten(trained.bundle, tmp_path / "apex", apex))
    video = next((demo.out / "heldout").rglob("*.mp4"), None) or demo.out / "heldout"
    code, _, err = _main(["predict", str(video), "--model", str(bad)], capsys)
    assert code == 2 and len(err) == 1 and "a clip cannot give its input" in err[0], err


def test_the_input_check_is_fitted_on_the_training_rows_and_old_bundles_still_predict(
    demo, round_trip, tmp_path
):
    from microfer.learn.bundle import load_bundle
    from microfer.recognise.predict import Predictor

    _, _, _, trained = round_trip
    doc = json.loads((trained.bundle / "bundle.json").read_text())
    check = doc["input_ood"]
    assert check["rows"] == trained.n_samples and check["groups"] == trained.n_subjects
    truth = pd.read_csv(demo.out / "heldout" / "synth_truth.csv", dtype=str)
    row = truth.iloc[0]
    video = next((demo.out / "heldout" / "clips").glob(f"{row['clip']}.*"), None)
    video = video or demo.out / "heldout" / row["frame_dir"]
    marks = {k: int(row[k]) for k in ("onset", "apex", "offset")}
    new = Predictor(trained.bundle).predict(video, **marks)
    assert new.input_ood_threshold == pytest.approx(check["threshold"], abs=1e-3)
    assert new.ood == (
        new.ood_score > new.ood_threshold or new.input_ood_score > check["threshold"]
    )
    assert "input:   score" in new.text()
    # a bundle written before the input check: no input_ood file or entry; it loads and
    # predicts the same label with the feature score alone
    old = _rewritten(trained.bundle, tmp_path / "old", lambda config: None)
    assert load_bundle(old).input_ood is None and not (old / "input_ood.safetensors").exists()
    before = Predictor(old).predict(video, **marks)
    assert before.label == new.label and before.input_ood_score is None
    assert before.ood == (before.ood_score > before.ood_threshold)
    assert "input:" not in before.text()
    # the check was fitted on the shipped teacher's logits; another teacher is refused
    from microfer.io import file_sha256
    from microfer.learn.bundle import save_bundle
    from microfer.models.fer_teacher import teacher_paths

    assert check["teacher_sha256"] == file_sha256(teacher_paths()[0])
    b = load_bundle(trained.bundle)
    b.input_ood.teacher_sha256 = "0" * 64
    other = save_bundle(
        tmp_path / "other",
        network_state=b.network,
        classifier=b.classifier,
        config=b.config,
        ood=b.ood,
        input_ood=b.input_ood,
    )
    with pytest.raises(BundleError, match="another FER teacher"):
        Predictor(other)


def test_training_on_circulated_inputs_asking_only_for_apex_crops_is_refused(round_trip, tmp_path):
    from microfer.errors import MicroferError
    from microfer.learn.evaluate import LosoSettings
    from microfer.learn.train import train_bundle

    tmp, _, _, _ = round_trip
    settings = LosoSettings(features=("mobilevit_xxs/apex/final/avg",), inner_splits=2)
    with pytest.raises(MicroferError, match="apex crops predict cannot make"):
        train_bundle(
            "megc2019-composite",
            tmp / "C",
            tmp_path / "b",
            manifest=tmp / "composite.csv",
            settings=settings,
            progress=False,
        )
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------- two frames
@pytest.fixture(scope="module")
def pair(demo):
    """(onset frame, apex frame, label) of the first held-out video."""
    from microfer.clip.video import open_frames

    truth = pd.read_csv(demo.out / "heldout" / "synth_truth.csv", dtype=str)
    row = truth.iloc[0]
    video = next((demo.out / "heldout" / "clips").glob(f"{row['clip']}.*"), None)
    video = video or demo.out / "heldout" / row["frame_dir"]
    onset, apex = open_frames(video).read([int(row["onset"]), int(row["apex"])])
    return onset, apex


def _gif(frames, path):
    from PIL import Image

    images = [Image.fromarray(f[..., ::-1]) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


def test_two_frame_gif_and_two_image_folder_are_onset_apex_pairs(demo, pair, tmp_path, capsys):
    from microfer.recognise.predict import Predictor

    predictor = Predictor(demo.bundle)
    gif = _gif(pair, tmp_path / "pair.gif")
    folder = tmp_path / "pair"
    folder.mkdir()
    cv2.imwrite(str(folder / "apex.png"), pair[1])  # named, so name order does not decide
    cv2.imwrite(str(folder / "onset.png"), pair[0])
    numbered = tmp_path / "numbered"
    numbered.mkdir()
    cv2.imwrite(str(numbered / "img46.png"), pair[0])
    cv2.imwrite(str(numbered / "img59.png"), pair[1])
    reference = predictor.predict(list(pair))
    assert (reference.onset, reference.apex, reference.offset) == (0, 1, 1)
    for clip in (gif, folder):
        for marks in ({"onset": 1, "apex": 2}, {}):
            p = predictor.predict(clip, **marks)
            assert (p.onset, p.apex, p.offset, p.spotted) == (1, 2, 2, [])
            assert "onset/apex pair" in p.notes and p.label in predictor.classes
    p = predictor.predict(folder)
    assert p.label == reference.label and p.scores == reference.scores  # lossless PNGs
    p = predictor.predict(numbered)  # numbered files keep their numbers
    assert (p.onset, p.apex) == (46, 59) and p.label == reference.label
    args = ["predict", str(gif), "--model", str(demo.bundle), "--onset", "1", "--apex", "2"]
    code, out, _ = _main(args, capsys)
    assert code == 0 and any("onset 1, apex 2" in line for line in out), out


def test_a_pair_with_other_marks_and_three_frames_are_refused(demo, pair):
    from microfer.recognise.predict import Predictor

    predictor = Predictor(demo.bundle)
    with pytest.raises(ClipError, match="onset/apex pair: the apex must be frame 1, not 0"):
        predictor.predict(list(pair), apex=0)
    with pytest.raises(ClipError, match="3 frame.*at least 4, or exactly 2"):
        predictor.predict([pair[0], pair[0], pair[1]])
