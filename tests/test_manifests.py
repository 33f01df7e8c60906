"""The committed data_manifests/ match the real coding files and the official MEGC2019 list."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from microfer.datasets import build_manifests, read_manifest
from microfer.records import MANIFEST_COLUMNS

MANIFESTS = Path(__file__).resolve().parents[1] / "data_manifests"
NAMES = ["casme2", "samm", "smic_hs", "smic_vis", "casme_sq", "megc2019_composite"]


@pytest.fixture(scope="module")
def built(annotations_dir):
    return build_manifests.build_all(annotations_dir)


@pytest.fixture(scope="module")
def composite():
    return read_manifest(MANIFESTS / "megc2019_composite.csv")


@pytest.mark.parametrize("name", NAMES)
def test_committed_manifest_is_what_the_coding_files_give(built, name):
    shipped = read_manifest(MANIFESTS / f"{name}.csv")
    assert list(shipped.columns) == MANIFEST_COLUMNS
    pd.testing.assert_frame_equal(shipped, built[name])


def test_manifest_sizes(built):
    sizes = {name: (len(df), df["subject"].nunique()) for name, df in built.items()}
    assert sizes == {
        "casme2": (255, 26),
        "samm": (159, 29),
        "smic_hs": (162, 16),
        "smic_vis": (71, 8),
        "casme_sq": (357, 22),
        "megc2019_composite": (442, 68),
    }


def test_composite_counts(composite):
    assert len(composite) == 442
    assert composite["dataset"].value_counts().to_dict() == {
        "smic_hs": 164,
        "casme2": 145,
        "samm": 133,
    }
    assert len(composite[["dataset", "subject"]].drop_duplicates()) == 68
    assert composite["label"].value_counts().to_dict() == {
        "negative": 250,
        "positive": 109,
        "surprise": 83,
    }


def test_composite_is_the_official_list(composite, annotations_dir):
    gt = pd.read_csv(
        annotations_dir / "MEGC2019/combined_3class_gt.csv",
        header=None,
        names=["dataset", "subject", "filename", "label"],
        dtype=str,
    )
    classes = {"0": "negative", "1": "positive", "2": "surprise"}

    # our ids back to the composite's spelling: s1 -> s01, 006 -> 6
    def composite_ids(r):
        if r["dataset"] == "smic_hs":
            n = int(r["subject"][1:])
            return "smic", f"s{n:02d}", f"s{n:02d}_" + r["clip"].split("_", 1)[1]
        if r["dataset"] == "samm":
            return "samm", str(int(r["subject"])), r["clip"]
        return r["dataset"], r["subject"], r["clip"]

    ours = sorted(composite_ids(r) + (r["label"],) for r in composite.to_dict("records"))
    theirs = sorted(
        (r["dataset"], r["subject"], r["filename"], classes[r["label"]])
        for r in gt.to_dict("records")
    )
    assert ours == theirs


def test_composite_rows_match_their_source_manifests(composite):
    sources = {
        name: read_manifest(MANIFESTS / f"{name}.csv") for name in ("casme2", "samm", "smic_hs")
    }
    index = {
        (n, r["subject"], r["clip"]): r for n, df in sources.items() for r in df.to_dict("records")
    }
    missing = []
    for r in composite.to_dict("records"):
        src = index.get((r["dataset"], r["subject"], r["clip"]))
        if src is None:
            missing.append(f"{r['dataset']}/{r['subject']}/{r['clip']}")
            assert pd.isna(r["onset"]) and pd.isna(r["offset"]) and "not in the" in r["notes"]
            continue
        assert (r["onset"], r["offset"], r["frame_template"], r["fps"]) == (
            src["onset"],
            src["offset"],
            src["frame_template"],
            src["fps"],
        )
        assert r["emotion"] == src["emotion"]
    assert missing == ["smic_hs/s1/s1_ne_02", "smic_hs/s2/s2_sur_05"]
    odd = composite[(composite["clip"] == "s18_sur_03")].iloc[0]
    assert (odd["emotion"], odd["label"]) == ("negative", "surprise") and "differs" in odd["notes"]


def test_readme_names_the_regeneration_command():
    text = (MANIFESTS / "README.md").read_text()
    assert "python -m microfer.datasets.build_manifests --annotations" in text


def test_build_manifests_main_writes_all(annotations_dir, tmp_path, capsys):
    assert (
        build_manifests.main(["--annotations", str(annotations_dir), "--out", str(tmp_path)]) == 0
    )
    assert sorted(p.stem for p in tmp_path.glob("*.csv")) == sorted(NAMES)
    for name in NAMES:
        assert (tmp_path / f"{name}.csv").read_bytes() == (MANIFESTS / f"{name}.csv").read_bytes()
    assert (
        build_manifests.main(["--annotations", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
