"""prepare_clip / prepare_dataset / Cache on synthetic clips in the real CASME II layout."""

import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pandas as pd
import pytest

import microfer.clip.prepare as prep
from microfer.clip.cache import Cache
from microfer.clip.prepare import PrepareSettings, prepare_clip, prepare_dataset
from microfer.clip.video import open_frames
from microfer.errors import ClipError, LayoutError

REAL_PREPARE_CLIP = prep.prepare_clip


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    from microfer.datasets import get
    from microfer.synth import generate

    s = generate(
        "casme2",
        tmp_path_factory.mktemp("synth") / "casme2",
        subjects=2,
        clips_per_subject=3,
        seed=1,
        apex_unknown=0.3,
        progress=False,
    )
    df = get("casme2").read(s.coding_file, root=s.root)
    truth = pd.read_csv(s.truth_file, dtype={"subject": str})
    assert df["apex"].isna().sum() >= 1  # some apexes must be spotted
    return s.root, df, truth


@pytest.fixture
def dataset(synth_set, tmp_path):
    """A private copy of the synthetic set (tests damage it)."""
    root, df, truth = synth_set
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    return copy, df.copy(), truth


def _count_calls(monkeypatch, fail_after=None):
    calls = []
    real = REAL_PREPARE_CLIP

    def counting(*args, **kwargs):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt  # the user pressing Ctrl-C / a kill mid-run
        calls.append(args[0].path)
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "prepare_clip", counting)
    return calls


def test_good_clips_prepared_cached_and_not_redone(dataset, tmp_path, monkeypatch):
    root, df, truth = dataset
    out = tmp_path / "cache"
    summary = prepare_dataset(df, root, out, PrepareSettings(), progress=False)
    assert summary.prepared == len(df) and not summary.failed and not summary.layout
    cache = Cache.for_settings(out, PrepareSettings())
    index = cache.index()
    assert list(index["status"]) == ["ok"] * len(df)
    assert set(index["apex_source"]) == {"annotated", "spotted"}
    for row in df.itertuples():
        clip = cache.load(f"casme2/{row.subject}/{row.clip}")
        assert clip.onset_face.shape == (128, 128, 3) and clip.flow.shape == (128, 128, 2)
        assert clip.strain.shape == (128, 128) and clip.transform.shape == (2, 3)
        assert clip.flow.dtype == np.float32 and np.isfinite(clip.flow).all()
        true_apex = int(
            truth[(truth["subject"] == row.subject) & (truth["clip"] == row.clip)]["apex"].iloc[0]
        )
        if pd.isna(row.apex):
            # Clips of 24-40 frames at 200 fps; measured error on such clips is 0-3 frames.
            assert clip.apex_source == "spotted" and abs(clip.apex - true_apex) <= 4
            assert clip.motion_curve.size == row.offset - row.onset + 1
        else:
            assert clip.apex_source == "annotated" and clip.apex == row.apex
            assert np.abs(clip.flow).max() > 0.3  # the synthetic expression is there
    assert (out / summary.settings_key / "settings.json").is_file()
    # Same settings again: nothing is redone.
    calls = _count_calls(monkeypatch)
    again = prepare_dataset(df, root, out, PrepareSettings(), progress=False)
    assert calls == [] and again.prepared == 0 and again.skipped == len(df)


def test_broken_clips_are_reported_and_skipped(dataset, tmp_path, faces_dir):
    root, df, truth = dataset
    rows = list(df.itertuples())
    gone, renamed, corrupt, noface, gap = rows[0], rows[1], rows[2], rows[3], rows[4]
    shutil.rmtree(root / gone.subject / gone.clip)
    (root / renamed.subject / renamed.clip).rename(root / renamed.subject / (renamed.clip + "_old"))
    onset_file = root / corrupt.subject / corrupt.clip / f"img{corrupt.onset}.jpg"
    onset_file.write_bytes(onset_file.read_bytes()[:2000])
    blank = open_frames(faces_dir / "debian-opencv-doc" / "Megamind.avi").read([0])[
        0
    ]  # CGI, no face
    for f in (root / noface.subject / noface.clip).glob("*.jpg"):
        cv2.imwrite(str(f), cv2.resize(blank, (640, 480)))
    (root / gap.subject / gap.clip / f"img{gap.onset + 3}.jpg").unlink()

    out = tmp_path / "cache"
    with pytest.raises(LayoutError) as err:
        prepare_dataset(df, root, out, PrepareSettings(), strict=True, progress=False)
    assert "3 of 6 clips" in str(err.value) and "layout_report.txt" in str(err.value)

    summary = prepare_dataset(df, root, out, PrepareSettings(), progress=False)
    report = (out / "layout_report.txt").read_text()
    assert f"{gone.clip}' not found" in report
    assert f"did you mean '{renamed.clip}_old'" in report
    assert f"frames {gap.onset + 3} of {gap.onset}..{gap.offset} missing" in report
    assert {p.key.split("/")[-1] for p in summary.layout} == {gone.clip, renamed.clip, gap.clip}
    failed = {f.key.split("/")[-1]: f for f in summary.failed}
    assert set(failed) == {corrupt.clip, noface.clip}
    assert failed[corrupt.clip].stage == "frames" and onset_file.name in failed[corrupt.clip].reason
    assert failed[noface.clip].stage == "face" and "no face" in failed[noface.clip].reason
    assert summary.prepared == 1
    index = Cache.for_settings(out, PrepareSettings()).index()
    assert sorted(index["status"]) == ["failed", "failed", "ok"]
    # Failures are remembered: a re-run does not retry them unless asked.
    again = prepare_dataset(df, root, out, PrepareSettings(), progress=False)
    assert again.prepared == 0 and again.earlier_failures == 2 and not again.failed
    retried = prepare_dataset(df, root, out, PrepareSettings(), progress=False, retry_failed=True)
    assert len(retried.failed) == 2


def test_interrupted_run_resumes_without_repeating_work(dataset, tmp_path, monkeypatch):
    root, df, _ = dataset
    out = tmp_path / "cache"
    _count_calls(monkeypatch, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(df, root, out, PrepareSettings(), progress=False)
    cache = Cache.for_settings(out, PrepareSettings())
    assert len(cache.index()) == 2  # the index was written on the way out
    calls = _count_calls(monkeypatch)
    summary = prepare_dataset(df, root, out, PrepareSettings(), progress=False)
    assert len(calls) == len(df) - 2 and summary.skipped == 2 and summary.prepared == len(df) - 2


def test_hard_kill_mid_write_leaves_no_corrupt_entry(dataset, tmp_path):
    root, df, _ = dataset
    out = tmp_path / "cache"
    manifest = tmp_path / "manifest.csv"
    df.to_csv(manifest, index=False)
    # A child process that dies (SIGKILL-like os._exit) while writing its 3rd entry.
    script = textwrap.dedent(f"""
        import os, numpy as np, pandas as pd
        import microfer.clip.cache as cache
        from microfer.clip.prepare import PrepareSettings, prepare_dataset
        real, n = np.savez_compressed, [0]
        def dying(path, **arrays):
            n[0] += 1
            if n[0] == 3:
                with open(path, "wb") as f:
                    f.write(b"PK half an entry")
                os._exit(9)
            real(path, **arrays)
        cache.np.savez_compressed = dying
        prepare_dataset(pd.read_csv({str(manifest)!r}, dtype={{"subject": str}}), {str(root)!r}, {str(out)!r},
                        PrepareSettings(), progress=False)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 9, proc.stderr
    key_dir = out / PrepareSettings().key()
    entries = [p for p in key_dir.rglob("*.npz") if not p.name.startswith(".")]
    assert len(entries) == 2  # whole entries only
    assert len(list(key_dir.rglob(".*.npz"))) == 1  # the dead writer's temporary file
    summary = prepare_dataset(df, root, out, PrepareSettings(), progress=False)
    assert summary.skipped == 2 and summary.prepared == len(df) - 2
    assert not list(key_dir.rglob(".*.npz"))
    cache = Cache.for_settings(out, PrepareSettings())
    assert len(cache.index()) == len(df)
    for key in cache.index()["key"]:
        assert cache.load(key).apex_face.shape == (128, 128, 3)


def test_changed_settings_get_a_new_cache_key(dataset, tmp_path):
    root, df, _ = dataset
    base = PrepareSettings()
    assert base.key() == PrepareSettings().key()
    keys = {
        base.key(),
        PrepareSettings(size=96).key(),
        PrepareSettings(flow="tvl1").key(),
        PrepareSettings(spot_method="flow").key(),
        PrepareSettings(version="prepare-x").key(),
    }
    assert len(keys) == 5
    out = tmp_path / "cache"
    small = PrepareSettings(size=96)
    prepare_dataset(df.head(2), root, out, base, progress=False)
    summary = prepare_dataset(df.head(2), root, out, small, progress=False)
    assert summary.prepared == 2  # nothing reused across settings
    assert Cache.for_settings(out, small).load(
        Cache.for_settings(out, small).index()["key"][0]
    ).flow.shape == (96, 96, 2)
    with pytest.raises(Exception, match="unknown flow"):
        PrepareSettings(flow="farneback")


def test_prepare_clip_from_arrays(dataset):
    root, df, _ = dataset
    row = df[df["apex"].notna()].iloc[0]
    src = open_frames(root / row["subject"] / row["clip"])
    numbers = list(range(int(row.onset), int(row.offset) + 1))
    frames = src.read(numbers)
    timings = {}
    clip = prepare_clip(frames, 0, int(row.apex) - int(row.onset), len(frames) - 1, timings=timings)
    assert clip.apex == int(row.apex) - int(row.onset) and clip.apex_source == "annotated"
    assert set(timings) == {"decode", "detect", "landmarks", "warp", "spot", "flow"}
    same = prepare_clip(src, int(row.onset), int(row.apex), int(row.offset))
    np.testing.assert_array_equal(same.flow, clip.flow)  # one transform, same motion
    bad = prepare_clip(frames, 0, 0, len(frames) - 1)  # apex == onset: spotted instead, and said
    assert bad.apex_source == "spotted" and "equals the onset" in bad.notes
    with pytest.raises(ClipError, match="not after onset"):
        prepare_clip(frames, 5, None, 5)
    with pytest.raises(ClipError, match="no face"):
        prepare_clip([np.full((240, 320, 3), 90, np.uint8)] * 4, 0, None, 3)


def test_memo_reuses_decoded_frames_and_onset_alignment_with_identical_results(
    synth_set, monkeypatch
):
    """predict's second pass (the spotted interval after a scan of the whole clip) reads no
    frame again and finds no face again: when its onset is the scan's, the face is the
    scan's; when it is a later frame where the face has not moved, the scan's box is kept
    and the landmarks are fitted on that frame. Same numbers as without the memo."""
    import dataclasses

    import microfer.clip.face
    import microfer.clip.face_checks
    import microfer.clip.one_clip

    root, df, _ = synth_set
    row = df.iloc[0]
    src = open_frames(root / row["subject"] / row["clip"])
    on, off = int(row.onset), int(row.offset)
    reads, detects = [], []

    class Counting:
        numbers, path = src.numbers, src.path

        def read(self, numbers):
            reads.append(list(numbers))
            return src.read(numbers)

    real_detect = microfer.clip.face.detect_faces
    for module in (microfer.clip.one_clip, microfer.clip.face_checks):  # the two that detect
        monkeypatch.setattr(
            module, "detect_faces", lambda *a, **k: detects.append(1) or real_detect(*a, **k)
        )

    def passes(memo):
        reads.clear(), detects.clear()
        scan = prepare_clip(Counting(), on, None, off, memo=memo)
        n_reads, n_detects = len(reads), len(detects)
        apex = on + 1 if scan.apex != on + 1 else on + 2
        same_onset = prepare_clip(Counting(), on, apex, off, memo=memo)
        later_onset = prepare_clip(Counting(), on + 2, scan.apex, off, memo=memo)
        return [scan, same_onset, later_onset], n_reads, len(reads), n_detects, len(detects)

    plain, _, plain_reads, _, plain_detects = passes(None)
    memo: dict = {}
    kept, scan_reads, memo_reads, scan_detects, memo_detects = passes(memo)
    assert scan_reads == 1 and memo_reads == scan_reads and plain_reads == 3  # nothing read twice
    # without the memo each pass detects its onset's face; with it only the scan does
    assert plain_detects == 3 and memo_detects == 1
    assert sorted(memo["onset_faces"]) == [on, on + 2]
    for a, b in zip(plain, kept):
        for f in dataclasses.fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if isinstance(x, np.ndarray):
                np.testing.assert_array_equal(x, y, err_msg=f.name)
            else:
                assert x == y, f.name


def test_cli_prepare(dataset, tmp_path):
    from click.testing import CliRunner

    from microfer.cli import cli

    root, df, _ = dataset
    coding = next(root.glob("*.xlsx"))
    args = [
        "prepare",
        "casme2",
        "--root",
        str(root),
        "--coding",
        str(coding),
        "--out",
        str(tmp_path / "c"),
        "--workers",
        "2",
        "--no-progress",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"prepared now: {len(df)}" in result.output
    result = CliRunner().invoke(cli, args[:-3])
    assert result.exit_code == 0 and f"already cached: {len(df)}" in result.output
