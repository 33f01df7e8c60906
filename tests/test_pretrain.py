"""Pretraining on macro-expression images: subject splits, labels, augmentation, whole-trunk
weights, the shipped weights and the --weights resolver."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from microfer.errors import BundleError, MicroferError
from microfer.io import file_sha256
from microfer.learn.macro_data import (
    MacroSet,
    combine,
    load_image_folder,
    load_images_by_subject,
    normalise_label,
    split_subjects,
)
from microfer.models import default_weights, resolve_weights
from microfer.models.mobilevit import TRUNK_MODULES, MobileViTExtractor
from microfer.models.weights import (
    read_block_meta,
    save_block_weights,
    scope_state_dict,
    weights_paths,
)

MACRO = Path(__file__).resolve().parents[1].parent / "shared" / "macro"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These networks are tiny; one thread avoids OpenMP spin-waits on a busy shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_faces(folder: Path, names, level: int, seed: int = 0) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(
            str(folder / name), np.clip(rng.normal(level, 20, (48, 48)), 0, 255).astype(np.uint8)
        )


def _ck_folder(root: Path, n_subjects: int = 10) -> Path:
    """CK+ layout: ROOT/<emotion>/S<subject>_<sequence>_<frame>.png, 3 frames per sequence."""
    for e, (emotion, level) in enumerate((("anger", 60), ("happy", 200), ("contempt", 120))):
        names = [
            f"S{s:03d}_{e + 1:03d}_{f:08d}.png"
            for s in range(1, n_subjects + 1)
            for f in (10, 11, 12)
        ]
        _write_faces(root / emotion, names, level, seed=e)
    return root


def _fer_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for emotion, level in (("angry", 60), ("happy", 200), ("neutral", 120)):
            _write_faces(root / split / emotion, [f"{split}_{i}.jpg" for i in range(4)], level)
    return root


# ---------------------------------------------------------------------------- data
def test_subject_split_never_puts_a_subject_in_both_splits(tmp_path):
    train, test = load_images_by_subject(_ck_folder(tmp_path / "ck"), input_size=32)
    tr_subj, te_subj = set(train.parts[0]["subjects"]), set(test.parts[0]["subjects"])
    assert tr_subj and te_subj and not tr_subj & te_subj and len(te_subj) == 2  # 20% of 10 subjects
    assert len(train) + len(test) == 90 and train.labels == test.labels == [
        "anger",
        "contempt",
        "happy",
    ]
    subject_of = lambda key: Path(key).name.split("_")[0][1:]  # noqa: E731
    assert {subject_of(k) for k in train.keys} == tr_subj and {
        subject_of(k) for k in test.keys
    } == te_subj
    assert train.faces.shape == (len(train), 32, 32, 3)
    assert np.array_equal(train.faces[..., 0], train.faces[..., 2])  # grey: 3 equal channels
    # deterministic, and a function of the seed only (not of file order or Python's hash salt)
    again_train, again_test = load_images_by_subject(tmp_path / "ck", input_size=32)
    assert again_test.keys == test.keys and again_train.keys == train.keys
    subjects = [f"{i:03d}" for i in range(1, 101)]
    assert split_subjects(subjects) == split_subjects(list(reversed(subjects)))
    assert split_subjects(subjects, seed=1) != split_subjects(subjects)
    tr, te = split_subjects(subjects, 0.2)
    assert len(te) == 20 and not set(tr) & set(te)

    _write_faces(tmp_path / "ck" / "anger", ["frame_without_subject.png"], 60)
    with pytest.raises(MicroferError, match="frame_without_subject.png: no subject id"):
        load_images_by_subject(tmp_path / "ck", input_size=32)


def test_labels_of_fer_and_ck_fold_into_one_set(tmp_path):
    assert [
        normalise_label(v)
        for v in (
            "Angry",
            "anger",
            "sad",
            "Sadness",
            "happiness",
            "happy",
            "surprise",
            "fear",
            "disgust",
            "contempt",
            "neutral",
            " Happy ",
        )
    ] == [
        "anger",
        "anger",
        "sadness",
        "sadness",
        "happy",
        "happy",
        "surprise",
        "fear",
        "disgust",
        "contempt",
        "neutral",
        "happy",
    ]
    fer = load_image_folder(_fer_folder(tmp_path / "fer"), "train", input_size=32)
    ck, _ = load_images_by_subject(_ck_folder(tmp_path / "ck"), input_size=32)
    both = combine([fer, ck])
    assert fer.labels == ["anger", "happy", "neutral"]
    assert both.labels == ["anger", "contempt", "happy", "neutral"]
    angry_fer = [i for i, k in enumerate(both.keys) if "/angry/" in k]
    anger_ck = [i for i, k in enumerate(both.keys) if "/anger/" in k]
    assert (
        angry_fer and anger_ck and set(both.y[angry_fer + anger_ck]) == {both.labels.index("anger")}
    )
    assert [p["source"] for p in both.parts] == ["fer/train", "ck/train"]


# ---------------------------------------------------------------------------- whole-trunk weights
def _trained_trunk(seed=5):
    import torch

    from microfer.learn.pretrain import build_classifier

    model = build_classifier("mobilevit_xxs", n_classes=3, seed=seed, scope="whole").eval()
    g = torch.Generator().manual_seed(seed)
    for name, buf in model.named_buffers():  # BN statistics a trained network would have
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return model


def test_whole_trunk_weights_round_trip_into_the_extractor(tmp_path):
    import torch

    model = _trained_trunk()
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        trunk_out = model.trunk(torch.from_numpy(x)).mean(dim=(2, 3)).numpy()
    meta = {"variant": "mobilevit_xxs", "representation": "apex", "input_size": 64}
    st32 = save_block_weights(model, tmp_path / "w32", meta, scope="whole")
    assert st32 == weights_paths(tmp_path / "w32")[0] and st32.name == "trunk.safetensors"
    doc = read_block_meta(tmp_path / "w32")
    assert (
        doc["scope"] == "whole"
        and doc["modules"] == list(TRUNK_MODULES)
        and doc["stored_dtype"] == "float32"
    )
    ext = MobileViTExtractor(
        "mobilevit_xxs", layer="final", pool="avg", input_size=64, block_weights=tmp_path / "w32"
    )
    assert np.allclose(ext(x), trunk_out, atol=1e-5)  # every trunk tensor came over

    # float16 storage: half the file, loaded as float32, equal to the fp16-rounded network
    st16 = save_block_weights(model, tmp_path / "w16", meta, scope="whole", store_dtype="float16")
    assert st16.stat().st_size < 0.55 * st32.stat().st_size
    ext16 = MobileViTExtractor(
        "mobilevit_xxs", layer="final", pool="avg", input_size=64, block_weights=tmp_path / "w16"
    )
    assert all(
        v.dtype == torch.float32 for v in ext16.state_dict().values() if v.is_floating_point()
    )
    rounded = {
        k: (v.half().float() if v.is_floating_point() else v) for k, v in model.state_dict().items()
    }
    model.load_state_dict(rounded)
    with torch.inference_mode():
        rounded_out = model.trunk(torch.from_numpy(x)).mean(dim=(2, 3)).numpy()
    assert np.allclose(ext16(x), rounded_out, atol=1e-5)
    # a shallower layer takes what it needs; a bundle's network state carries the weights (predict path)
    shallow = MobileViTExtractor(
        "mobilevit_xxs", layer="stage3", input_size=64, block_weights=tmp_path / "w16"
    )
    fresh = MobileViTExtractor("mobilevit_xxs", layer="stage3", input_size=64, seed=3)
    fresh.load_state_dict(shallow.state_dict())
    assert np.array_equal(fresh(x), shallow(x))
    # an MV2-block extractor refuses nothing it should take: the trunk file names its scope
    assert set(scope_state_dict(model, "whole", "mobilevit_xxs")) == set(doc["tensors"])


# ---------------------------------------------------------------------------- training
def _face_set(n_per_class=6, size=32):
    """Two 'emotions' as grey faces: bright vs dark lower half."""
    rng = np.random.default_rng(0)
    faces, y = [], []
    for c in range(2):
        for _ in range(n_per_class):
            f = rng.normal(120, 15, (size, size)).clip(0, 255)
            f[size // 2 :] += 60 if c else -60
            faces.append(np.repeat(f.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
            y.append(c)
    return MacroSet(
        "apex",
        size,
        ["happy", "surprise"],
        np.array(y),
        [f"img/{i}" for i in range(len(y))],
        np.zeros((0, 3, size, size), np.float32),
        np.stack(faces),
    )


def test_whole_trunk_pretraining_resumes_exactly_with_augmentation(tmp_path):
    from safetensors.torch import load_file

    from microfer.learn import augment
    from microfer.learn.pretrain import PretrainSettings, pretrain

    data, held_out = _face_set(), {"heldout": _face_set(n_per_class=3)}
    params = augment.draw(np.random.default_rng([0, 0]), 4)
    assert not np.allclose(
        data.batch(np.arange(4), params), data.batch(np.arange(4))
    )  # augmentation acts

    def settings(epochs):
        return PretrainSettings(
            representation="apex",
            input_size=32,
            scope="whole",
            epochs=epochs,
            batch_size=4,
            seed=3,
            augment=True,
            device="cpu",
        )

    pretrain(data, settings(1), tmp_path / "a", progress=False, test_sets=held_out)
    resumed = pretrain(
        data, settings(2), tmp_path / "a", resume=True, progress=False, test_sets=held_out
    )
    straight = pretrain(
        data,
        settings(2),
        tmp_path / "b",
        progress=False,
        test_sets=held_out,
        notes={"command": "microfer pretrain ..."},
    )
    assert resumed.resumed_from == 1 and resumed.weights.name == "trunk.safetensors"
    wa, wb = load_file(str(resumed.weights)), load_file(str(straight.weights))
    assert set(wa) == set(wb) and all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert [h["test"]["heldout"] for h in resumed.history] == [
        h["test"]["heldout"] for h in straight.history
    ]
    meta = read_block_meta(tmp_path / "b")
    assert meta["scope"] == "whole" and meta["command"] == "microfer pretrain ..."
    assert (
        meta["test_metrics"]["heldout"]["n"] == 6
        and 0 <= meta["test_metrics"]["heldout"]["macro_f1"] <= 1
    )
    assert meta["augmentation"]["rotation_deg"] > 0 and meta["settings"]["augment"] is True
    with pytest.raises(MicroferError, match="test_hash"):  # the record must stay one test set's
        pretrain(data, settings(3), tmp_path / "a", resume=True, progress=False, test_sets={})


def test_pretrain_command_on_fer_and_ck_layouts(tmp_path):
    from click.testing import CliRunner

    from microfer.cli import cli

    out = tmp_path / "w"
    args = [
        "pretrain",
        "--images",
        str(_fer_folder(tmp_path / "fer")),
        "--images-by-subject",
        str(_ck_folder(tmp_path / "ck", n_subjects=5)),
        "--scope",
        "whole",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--input-size",
        "32",
        "--store-dtype",
        "float16",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "4 training subjects (36 images), 1 test subjects (9 images)" in res.output
    assert "test fer: 12 samples" in res.output and "test ck: 9 samples" in res.output
    meta = read_block_meta(out)
    assert (
        meta["scope"] == "whole"
        and meta["representation"] == "apex"
        and meta["stored_dtype"] == "float16"
    )
    assert set(meta["test_metrics"]) == {"fer", "ck"}
    assert meta["labels"] == ["anger", "contempt", "happy", "neutral"]
    assert (
        meta["command"].startswith("microfer pretrain --images ")
        and "--scope whole" in meta["command"]
    )
    assert "--resume" not in meta["command"] and "--grey" in meta["command"]
    assert (
        "--representation apex --variant" in meta["command"]
    )  # the default it resolved to, spelt out


def test_pretrain_command_passes_its_start_and_teacher_options(tmp_path):
    """--init, --teacher and --distill-alpha reach the run: a lost option trains from
    scratch without a word (it happened once, in the cli split)."""
    from click.testing import CliRunner

    from microfer.cli import cli

    data = ["--images", str(_fer_folder(tmp_path / "fer")), "--device", "cpu", "--threads", "1"]
    res = CliRunner().invoke(
        cli, ["pretrain", *data, "--init", "imagenet", "--out", str(tmp_path / "m")]
    )
    assert res.exit_code != 0 and "efficientnet_lite0" in str(res.exception), res.output
    out = tmp_path / "d"
    args = [
        "pretrain",
        *data,
        "--variant",
        "efficientnet_lite0",
        "--epochs",
        "1",
        "--batch-size",
        "4",
    ]
    args += ["--teacher", "default", "--distill-alpha", "0.5", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    meta = read_block_meta(out)
    assert meta["settings"]["teacher"] == "default" and meta["settings"]["init"] == "random"
    assert meta["distillation"]["alpha"] == 0.5 and "start" not in meta


# ---------------------------------------------------------------------------- shipped weights
def test_shipped_weights_load_and_match_their_card():
    card = default_weights()
    st, js = weights_paths(card)
    meta = read_block_meta(card)
    assert file_sha256(st) == meta["weights_sha256"] and st.stat().st_size < 2_000_000
    assert (
        meta["variant"],
        meta["scope"],
        meta["representation"],
        meta["input_size"],
        meta["stored_dtype"],
    ) == ("mobilevit_xxs", "whole", "apex", 64, "float16")
    assert meta["command"].startswith("microfer pretrain ") and set(meta["test_metrics"]) == {
        "fer2013",
        "CK+48",
    }
    assert "FER-2013" in json.dumps(meta["training_data_terms"]) and "CK+" in json.dumps(
        meta["training_data_terms"]
    )
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    ext = MobileViTExtractor("mobilevit_xxs", layer="final", input_size=64, block_weights=card)
    feats = ext(x)
    assert np.isfinite(feats).all() and not np.allclose(
        feats, MobileViTExtractor("mobilevit_xxs", layer="final", input_size=64)(x)
    )


def test_weights_resolver():
    assert resolve_weights("default") == str(default_weights())
    assert (
        resolve_weights("none") is None
        and resolve_weights("None") is None
        and resolve_weights(None) is None
    )
    with pytest.raises(BundleError, match="not found"):
        resolve_weights("/nonexistent/weights.json")


def test_tampered_weights_are_refused(tmp_path):
    st, js = weights_paths(default_weights())
    shutil.copy(st, tmp_path / st.name)
    shutil.copy(js, tmp_path / js.name)
    data = bytearray((tmp_path / st.name).read_bytes())
    data[-100] ^= 0x01  # one bit of one weight
    (tmp_path / st.name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        MobileViTExtractor("mobilevit_xxs", input_size=64, block_weights=tmp_path / js.name)


# ---------------------------------------------------------------------------- real macro data
def test_real_ck_split_is_by_subject_and_fer_labels_are_canonical():
    if not (MACRO / "CK+48").is_dir():
        pytest.skip(f"real macro-expression images not available ({MACRO} is absent)")
    train, test = load_images_by_subject(MACRO / "CK+48", input_size=32)
    assert len(train) + len(test) == 981
    assert not set(train.parts[0]["subjects"]) & set(test.parts[0]["subjects"])
    labels = sorted(
        normalise_label(d.name) for d in (MACRO / "fer2013" / "test").iterdir() if d.is_dir()
    )
    assert labels == ["anger", "disgust", "fear", "happy", "neutral", "sadness", "surprise"]
    assert train.labels == ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]


def test_warmup_rises_per_step_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from microfer.learn.pretrain import PretrainSettings, pretrain, warmup_factor

    assert warmup_factor(0, 0, 0, 10) == 1.0
    assert [warmup_factor(1.5, e, s, 4) for e, s in ((0, 0), (0, 3), (1, 0), (1, 1), (2, 0))] == [
        1 / 6,
        4 / 6,
        5 / 6,
        1.0,
        1.0,
    ]

    data = _face_set()

    def settings(epochs, warmup=1.5):
        return PretrainSettings(
            variant="vit_tiny_patch16_224",
            representation="apex",
            input_size=32,
            scope="whole",
            epochs=epochs,
            batch_size=4,
            lr=1e-3,
            warmup_epochs=warmup,
            augment=False,
            device="cpu",
            num_threads=1,
        )

    pretrain(data, settings(1), tmp_path / "a", progress=False)
    resumed = pretrain(data, settings(2), tmp_path / "a", resume=True, progress=False)
    straight = pretrain(data, settings(2), tmp_path / "b", progress=False)
    wa, wb = load_file(str(resumed.weights)), load_file(str(straight.weights))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert "linear warm-up over the first 1.5 epochs" in read_block_meta(tmp_path / "b")["schedule"]
    no_warmup = pretrain(data, settings(2, warmup=0), tmp_path / "c", progress=False)
    wc = load_file(str(no_warmup.weights))
    assert not all(np.array_equal(wc[k].numpy(), wb[k].numpy()) for k in wc)  # the warm-up acts
    with pytest.raises(MicroferError, match="cannot resume"):  # a different schedule is another run
        pretrain(data, settings(3, warmup=0), tmp_path / "a", resume=True, progress=False)


def test_interrupted_pretraining_leaves_the_old_output_whole_and_resumes(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from microfer.learn import pretrain as pretrain_module
    from microfer.learn.pretrain import PretrainSettings, pretrain, staging_dir

    data = _face_set()

    def settings(epochs):
        return PretrainSettings(
            representation="apex", input_size=32, epochs=epochs, batch_size=4, device="cpu"
        )

    out = tmp_path / "a"
    pretrain(data, settings(1), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_epoch = pretrain_module.train_epoch

    def ctrl_c_in_third_epoch(run, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(run, epoch)

    monkeypatch.setattr(pretrain_module, "train_epoch", ctrl_c_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain(data, settings(3), out, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the 1-epoch output
    staging = staging_dir(out)
    assert json.loads((staging / "checkpoint.json").read_text())["epochs_done"] == 2
    with pytest.raises(MicroferError, match="unfinished pretraining"):  # no silent restart
        pretrain(data, settings(3), out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    monkeypatch.setattr(pretrain_module, "train_epoch", real_epoch)
    resumed = pretrain(data, settings(3), out, resume=True, progress=False)
    straight = pretrain(data, settings(3), tmp_path / "b", progress=False)
    assert resumed.resumed_from == 2 and not staging.exists()
    assert read_block_meta(out)["epochs"] == 3
    wa, wb = load_file(str(resumed.weights)), load_file(str(straight.weights))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_pretraining_refuses_a_folder_it_did_not_write(tmp_path):
    from microfer.learn.pretrain import PretrainSettings, pretrain

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    settings = PretrainSettings(representation="apex", input_size=32, epochs=1, batch_size=4)
    with pytest.raises(FileExistsError) as err:
        pretrain(_face_set(), settings, out, progress=False)
    assert err.value.filename == str(out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left
