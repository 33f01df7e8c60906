"""Exit codes and one-line errors of the CLI (docs/bad-input.md): 0 all good, 2 bad input or
nothing usable, 3 finished with failed/skipped clips or dropped rows (listed)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings

import numpy as np
import pandas as pd
import pytest

from microfer.errors import MicroferError
from microfer.records import MANIFEST_COLUMNS

REAL_MKSTEMP = tempfile.mkstemp
HEADER = "Subject,Filename,OnsetFrame,ApexFrame,OffsetFrame,Estimated Emotion\n"


def run_main(capsys, *args) -> tuple[int, str, str]:
    """`microfer ARGS` exactly as the console script runs it: (exit code, stdout, stderr)."""
    from microfer.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def one_line_error(err: str) -> str:
    """The `error: ...` line: exactly one, and no traceback."""
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def coding(tmp_path):
    """A CASME II coding file (csv) with one good row and one row the adapter drops."""
    path = tmp_path / "coding.csv"
    path.write_text(HEADER + "1,EP01_01,10,15,30,happiness\n2,EP02_01,40,35,30,surprise\n")
    return path


def refuse_writes(monkeypatch, error=errno.EACCES):
    """Every atomic write fails as on a read-only folder (or a full disk): tests run as root,
    where chmod does not stop writes, so the refusal is simulated where files are created."""

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        raise OSError(error, os.strerror(error), f"{dir}/{prefix}XXXXXX{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


# ----------------------------------------------------------------------------- manifest
def test_manifest_with_dropped_rows_exits_3_and_writes(coding, tmp_path, capsys):
    out = tmp_path / "m.csv"
    code, stdout, err = run_main(capsys, "manifest", "casme2", "--coding", coding, "--out", out)
    assert code == 3
    assert out.is_file() and "sub02/EP02_01: onset 40 > offset 30" in stdout
    assert "incomplete: 1 of 2 coding rows dropped" in err


def test_manifest_that_keeps_no_row_exits_2_and_writes_nothing(tmp_path, capsys):
    coding = tmp_path / "bad.csv"
    coding.write_text(HEADER + "2,EP02_01,40,35,30,surprise\n")
    out = tmp_path / "m.csv"
    code, _, err = run_main(capsys, "manifest", "casme2", "--coding", coding, "--out", out)
    assert code == 2 and not out.exists()
    line = one_line_error(err)
    assert str(coding) in line and "no usable row" in line and "onset 40 > offset 30" in line


def test_empty_coding_file_and_manifest_are_called_empty(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    code, _, err = run_main(
        capsys, "manifest", "casme2", "--coding", empty, "--out", tmp_path / "m.csv"
    )
    assert code == 2
    line = one_line_error(err)
    assert str(empty) in line and "empty (0 bytes)" in line
    from microfer.datasets import read_manifest

    with pytest.raises(MicroferError, match="empty \\(0 bytes\\)"):
        read_manifest(empty)


def test_empty_video_is_called_empty(tmp_path):
    from microfer.clip.video import open_frames

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(MicroferError, match=f"{video} is empty \\(0 bytes\\)"):
        open_frames(video)


# ------------------------------------------------------------------- OSError on outputs
def test_output_below_an_existing_file_is_one_line(coding, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run_main(
        capsys, "manifest", "casme2", "--coding", coding, "--out", blocker / "m.csv"
    )
    assert code == 2
    line = one_line_error(err)
    assert str(blocker) in line and "Not a directory" in line
    code, _, err = run_main(
        capsys,
        "prepare",
        "casme2",
        "--root",
        tmp_path,
        "--coding",
        coding,
        "--out",
        blocker / "cache",
        "--no-progress",
    )
    assert code == 2
    line = one_line_error(err)
    assert str(blocker) in line and "Not a directory" in line


def test_read_only_output_and_full_disk_are_one_line(coding, tmp_path, monkeypatch, capsys):
    refuse_writes(monkeypatch)
    out = tmp_path / "m.csv"
    code, _, err = run_main(capsys, "manifest", "casme2", "--coding", coding, "--out", out)
    assert code == 2 and one_line_error(err) == f"error: {out}: Permission denied"
    refuse_writes(monkeypatch, errno.ENOSPC)
    code, _, err = run_main(capsys, "manifest", "casme2", "--coding", coding, "--out", out)
    assert code == 2 and one_line_error(err) == f"error: {out}: No space left on device"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # a write that names no file

    monkeypatch.setattr(tempfile, "mkstemp", REAL_MKSTEMP)
    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    code, _, err = run_main(capsys, "manifest", "casme2", "--coding", coding, "--out", out)
    assert code == 2 and one_line_error(err) == f"error: {out}: No space left on device"
    assert not out.exists() and not list(tmp_path.glob(".m.csv.*"))


# ------------------------------------------------------------------------------ prepare
def test_prepare_nothing_prepared_exits_2_with_a_one_line_reason_and_warnings_are_one_line(
    coding, tmp_path, capsys
):
    (tmp_path / "root").mkdir()
    code, stdout, err = run_main(
        capsys,
        "prepare",
        "casme2",
        "--root",
        tmp_path / "root",
        "--coding",
        coding,
        "--out",
        tmp_path / "cache",
        "--no-progress",
    )
    assert code == 2 and "prepared now: 0" in stdout
    line = one_line_error(err)
    assert "none of the 1 clip(s) is prepared" in line and str(tmp_path / "cache") in line
    # the repaired/dropped coding row: one microfer line, no Python source path or line number
    warning = [l for l in err.splitlines() if "dropped 1 row(s)" in l]
    assert warning == [f"warning: {coding}: dropped 1 row(s): sub02/EP02_01: onset 40 > offset 30"]
    assert ".py:" not in err
    assert warnings.showwarning.__module__ == "warnings"  # main() puts the hook back


def test_prepare_with_a_failed_clip_exits_3_and_a_finished_cache_needs_no_writes(
    tmp_path, monkeypatch, capsys
):
    from microfer.synth import generate

    s = generate(
        "casme2", tmp_path / "data", subjects=1, clips_per_subject=2, seed=1, progress=False
    )
    clips = sorted(p for p in s.root.glob("sub*/*") if p.is_dir())
    shutil.rmtree(clips[1])  # one clip's frames are gone: skipped by the layout check
    args = [
        "prepare",
        "casme2",
        "--root",
        s.root,
        "--coding",
        s.coding_file,
        "--out",
        tmp_path / "cache",
        "--no-progress",
    ]
    code, stdout, err = run_main(capsys, *args)
    assert code == 3, err
    assert "prepared now: 1" in stdout and "skipped by the layout check: 1" in stdout
    assert (
        f"casme2: 2 samples from coding file {s.coding_file}" in stdout
    )  # says which sample list it used
    assert "incomplete: 1 of 2 clips failed or were skipped" in err and "Traceback" not in err
    # the cache is complete: a rerun on a folder that refuses writes does not need to write
    refuse_writes(monkeypatch)
    code, stdout, err = run_main(capsys, *args)
    assert code == 3 and "already cached: 1" in stdout and "error:" not in err
    # ... while a fresh run into it is refused in one line naming the path
    code, _, err = run_main(capsys, *args[:-3], "--out", tmp_path / "cache2", "--no-progress")
    assert code == 2
    line = one_line_error(err)
    assert str(tmp_path / "cache2") in line and line.endswith("Permission denied")


# ------------------------------------------------------------------------- loso / train
def _one_class_cache(tmp_path):
    from microfer.clip.cache import Cache
    from microfer.records import PreparedClip

    rng = np.random.default_rng(0)

    def synthetic_clip(size=32):
        face = rng.integers(60, 200, size=(size, size, 3), dtype=np.uint8)
        flow = rng.normal(0, 0.15, size=(size, size, 2)).astype(np.float32)
        return PreparedClip(
            onset=10,
            apex=15,
            offset=20,
            apex_source="annotated",
            onset_face=face,
            apex_face=face.copy(),
            flow=flow,
            strain=np.abs(flow[..., 0]),
            landmarks=np.zeros((68, 2), np.float32),
            transform=np.eye(2, 3, dtype=np.float32),
            face_box=(0, 0, size, size),
        )

    cache = Cache(tmp_path / "cache", "settingsA", {"note": "synthetic"})
    rows = []
    for s in range(3):
        for i in range(2):
            subject, clip = f"sub{s + 1:02d}", f"EP{s}{i}"
            cache.save(f"casme2/{subject}/{clip}", synthetic_clip())
            row = dict.fromkeys(MANIFEST_COLUMNS, "")
            row.update(
                dataset="casme2",
                subject=subject,
                clip=clip,
                onset="10",
                apex="15",
                offset="20",
                emotion="happiness",
                label="happiness",
                frame_template=f"{subject}/{clip}/img{{frame}}.jpg",
                fps="200",
            )
            rows.append(row)
    cache.flush_index()
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(manifest, index=False)
    return cache.dir, manifest


def test_loso_and_train_refuse_a_single_class(tmp_path, capsys):
    from microfer.learn.evaluate import gather_features, run_loso

    cache, manifest = _one_class_cache(tmp_path)
    for fn in (run_loso, gather_features):
        with pytest.raises(MicroferError, match=r"hold 1 class \(happiness\)"):
            fn("casme2-5class", cache, manifest=manifest, progress=False)
    for command in ("loso", "train"):
        code, stdout, err = run_main(
            capsys,
            command,
            "--protocol",
            "casme2-5class",
            "--cache",
            cache,
            "--manifest",
            manifest,
            "--out",
            tmp_path / command,
        )
        assert code == 2, err
        line = one_line_error(err)
        assert "hold 1 class (happiness)" in line and "at least 2" in line
        assert "UF1" not in stdout and not (tmp_path / command).exists()


@pytest.mark.parametrize("jobs", ["0", "-5"])
def test_loso_jobs_must_be_positive_or_minus_one(tmp_path, capsys, jobs):
    code, _, err = run_main(
        capsys, "loso", "--protocol", "casme2-5class", "--cache", tmp_path, "--jobs", jobs
    )
    assert code == 2 and "--jobs" in err and "-1 for all cores" in err and "Traceback" not in err


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    """`demo --out D` once overwrote the user's D/manifest.csv and D/loso/report.md."""
    from microfer.cli import main

    (tmp_path / "manifest.csv").write_text("my own manifest")
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2 and "no demo wrote it" in capsys.readouterr().err
    assert (tmp_path / "manifest.csv").read_text() == "my own manifest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]
