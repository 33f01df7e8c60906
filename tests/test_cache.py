"""The prepare cache follows its inputs: a changed coding row or frame is prepared again,
a damaged entry is one error line naming the file, and `prepare` rebuilds it."""

import json
import os
import shutil

import pandas as pd
import pytest

from microfer.clip.cache import Cache, open_cache, prepare_settings_of
from microfer.clip.prepare import PrepareSettings, prepare_dataset
from microfer.errors import MicroferError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from microfer.datasets import get
    from microfer.synth import generate

    s = generate(
        "casme2",
        tmp_path_factory.mktemp("synth") / "casme2",
        subjects=2,
        clips_per_subject=2,
        seed=3,
        apex_unknown=0.0,
        progress=False,
    )
    df = get("casme2").read(s.coding_file, root=s.root)
    out = tmp_path_factory.mktemp("cache")
    first = prepare_dataset(df, s.root, out, progress=False)
    assert first.prepared == len(df) and not first.failed
    return s.root, df, out


@pytest.fixture
def copy(prepared, tmp_path):
    root, df, out = prepared
    shutil.copytree(root, tmp_path / "data")
    shutil.copytree(out, tmp_path / "cache")
    return tmp_path / "data", df.copy(), tmp_path / "cache"


def test_an_unchanged_rerun_prepares_nothing(copy):
    root, df, out = copy
    again = prepare_dataset(df, root, out, progress=False)
    assert again.prepared == 0 and again.skipped == len(df) and again.changed == []


def test_a_corrected_apex_is_prepared_again(copy):
    root, df, out = copy
    row = df.index[0]
    key = f"{df.at[row, 'dataset']}/{df.at[row, 'subject']}/{df.at[row, 'clip']}"
    old = Cache.for_settings(out, PrepareSettings()).load(key).apex
    new_apex = int(df.at[row, "onset"]) + 1 if old != int(df.at[row, "onset"]) + 1 else old + 1
    df.at[row, "apex"] = new_apex
    again = prepare_dataset(df, root, out, progress=False)
    assert again.changed == [key] and again.prepared == 1
    assert Cache.for_settings(out, PrepareSettings()).load(key).apex == new_apex
    assert "coding row or frames changed: 1" in again.text()


def test_a_replaced_frame_is_prepared_again(copy):
    root, df, out = copy
    from microfer.clip.video import frames_for_sample
    from microfer.records import Sample

    row = df.iloc[1]
    sample = Sample.from_row(row)
    frame = frames_for_sample(root, sample).files[sample.onset + 1]
    stat = frame.stat()
    os.utime(frame, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # re-saved later
    again = prepare_dataset(df, root, out, progress=False)
    assert again.changed == [sample.key] and again.prepared == 1


def test_a_damaged_entry_names_its_file_and_prepare_rebuilds_it(copy):
    root, df, out = copy
    cache = open_cache(next(p for p in out.iterdir() if p.is_dir()))
    key = cache.index()["key"].iloc[0]
    path = cache.entry_path(key)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated by a crash of the disk, not of microfer
    with pytest.raises(MicroferError, match=str(path).replace("\\", "\\\\") + ".*damaged"):
        open_cache(cache.dir).load(key)
    again = prepare_dataset(df, root, out, progress=False)
    assert again.prepared == 1
    assert open_cache(cache.dir).load(key).flow.shape[-1] == 2


def test_a_corrupt_settings_file_is_one_error_naming_it(copy):
    _, _, out = copy
    folder = next(p for p in out.iterdir() if p.is_dir())
    (folder / "settings.json").write_text("{not json")
    with pytest.raises(MicroferError, match="settings.json: damaged"):
        prepare_settings_of(open_cache(folder))
    (folder / "settings.json").write_text(json.dumps({"settings": [1, 2]}))
    with pytest.raises(MicroferError, match="not a mapping"):
        prepare_settings_of(open_cache(folder))


def test_the_index_records_the_inputs(prepared):
    _, df, out = prepared
    index = open_cache(next(p for p in out.iterdir() if p.is_dir())).index()
    assert len(index) == len(df) and (index["inputs"].str.len() == 16).all()
    assert isinstance(index, pd.DataFrame)


def test_a_missing_root_is_one_error_and_writes_nothing(prepared, tmp_path):
    from microfer.errors import LayoutError

    _, df, _ = prepared
    out = tmp_path / "cache"
    with pytest.raises(LayoutError, match="nowhere: the dataset root does not exist"):
        prepare_dataset(df, tmp_path / "nowhere", out, progress=False)
    assert not out.exists()


def test_a_fifo_named_like_a_frame_is_not_opened(tmp_path):
    import cv2
    import numpy as np

    from microfer.clip.video import open_frames

    for n in (1, 2, 3):
        cv2.imwrite(str(tmp_path / f"img{n}.jpg"), np.full((8, 8, 3), n * 40, np.uint8))
    os.mkfifo(tmp_path / "img5.jpg")  # reading it would block forever
    source = open_frames(tmp_path)
    assert source.numbers == [1, 2, 3]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("detect_max_side", 0, "outside 64..8192"),
        ("size", "128", "whole number"),
        ("upsample", True, "whole number"),
        ("flow", ["dis"], "must be text"),
    ],
)
def test_prepare_settings_from_a_file_are_checked_by_type_and_range(field, value, message):
    """Settings come back from bundle.json and settings.json: a wrong type is refused there,
    not deep inside OpenCV or dlib."""
    with pytest.raises(MicroferError, match=message):
        PrepareSettings(**{field: value})


def test_pretraining_reads_a_prepare_cache_labelled_by_its_manifest(prepared):
    from microfer.learn.macro_data import load_cache_samples, normalise_label

    _, df, out = prepared
    data = load_cache_samples(out, df, "flow", input_size=32)
    assert len(data) == len(df) and data.inputs.shape == (len(df), 3, 32, 32)
    want = sorted({normalise_label(e) for e in df["emotion"]} - {""})
    assert data.labels == want
    fewer = df.iloc[1:]  # a clip without a manifest row is left out, and counted
    assert len(load_cache_samples(out, fewer, "flow", input_size=32)) == len(df) - 1


def test_loso_refuses_a_cache_prepared_from_other_frames_than_the_manifest(prepared):
    """A corrected apex in the manifest once gave exit 0 and the old numbers."""
    from microfer.learn.evaluate import match_cache

    _, df, out = prepared
    index = open_cache(next(p for p in out.iterdir() if p.is_dir())).index()
    samples = df.assign(group=df["dataset"] + "/" + df["subject"])
    kept, excluded = match_cache(samples, index)
    assert len(kept) == len(df) and excluded.empty
    changed = samples.copy()
    changed.loc[changed.index[0], "apex"] = int(changed["apex"].iloc[0]) + 1
    with pytest.raises(MicroferError, match=r"disagrees with the manifest for 1 clip.*apex"):
        match_cache(changed, index)
    later = samples.copy()
    later.loc[later.index[1], "offset"] = int(later["offset"].iloc[1]) + 3
    with pytest.raises(MicroferError, match=r"offset .* in the manifest"):
        match_cache(later, index)
