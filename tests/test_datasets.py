"""Dataset adapters on the REAL coding files and on re-saved variants with each known mess."""

from __future__ import annotations

import csv
import sys
import warnings

import openpyxl
import pandas as pd
import pytest
from click.testing import CliRunner

from microfer import datasets
from microfer.datasets import casme2, casme_sq, samm, smic
from microfer.datasets._coding import CodingWarning, frame_number
from microfer.errors import AnnotationError, LayoutError, MicroferError
from microfer.records import MANIFEST_COLUMNS

CASME2_2014 = "CASME2/CASME2-coding-20140508.xlsx"
CASME2_2019 = "CASME2/CASME2-coding-20190701.xlsx"
SAMM = "SAMM/SAMM_Micro_FACS_Codes_v2.xlsx"
SMIC = "SMIC/SMIC-HS-E_annotation_orig.xlsx"
CASME_SQ = "CASME_sq/CAS(ME)^2code_final(Updated).csv"


def read(name, path, root=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CodingWarning)  # the official files drop nothing
        return datasets.get(name).read(path, root)


def row(df, subject, clip):
    hit = df[(df.subject == subject) & (df["clip"] == clip)]
    assert len(hit) == 1, f"{subject}/{clip}: {len(hit)} rows"
    return hit.iloc[0]


def sheet_rows(path, sheet=None):
    wb = openpyxl.load_workbook(path, data_only=True)
    ws = wb[sheet] if sheet else wb.worksheets[0]
    return [list(r) for r in ws.iter_rows(values_only=True)]


def write_xlsx(path, rows, sheet="Sheet1", extra_sheets=()):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = sheet
    for r in rows:
        ws.append(list(r))
    for name, more in extra_sheets:
        other = wb.create_sheet(name)
        for r in more:
            other.append(list(r))
    wb.save(path)
    return path


def frames_of(df):
    return df[["subject", "clip", "onset", "apex", "offset", "emotion"]].reset_index(drop=True)


# ------------------------------------------------------------------ registry


def test_registry_lists_every_dataset_with_layout():
    assert datasets.names() == [
        "casme2",
        "samm",
        "smic_hs",
        "smic_vis",
        "smic_nir",
        "casme_sq",
        "samm_lv",
    ]
    fps = {n: datasets.get(n).fps for n in datasets.names()}
    assert fps == {
        "casme2": 200,
        "samm": 200,
        "smic_hs": 100,
        "smic_vis": 25,
        "smic_nir": 25,
        "casme_sq": 30,
        "samm_lv": 200,
    }
    assert "reg_img" in datasets.get("casme2").layout
    assert "{frame:05d}" in datasets.get("samm").layout
    with pytest.raises(MicroferError, match="unknown dataset 'casme3'"):
        datasets.get("casme3")


# ------------------------------------------------------------------ CASME II


@pytest.mark.parametrize("name", [CASME2_2014, CASME2_2019])
def test_casme2_real_files(annotations_dir, name):
    df = read("casme2", annotations_dir / name)
    assert list(df.columns) == MANIFEST_COLUMNS
    assert len(df) == 255 and df.subject.nunique() == 26
    assert str(df.apex.dtype) == "Int64" and str(df.onset.dtype) == "Int64"
    first = row(df, "sub01", "EP02_01f")
    assert (first.onset, first.apex, first.offset) == (46, 59, 86)
    assert first.frame_template == "sub01/EP02_01f/img{frame}.jpg" and first.fps == 200
    slash = row(df, "sub04", "EP12_01f")  # apex '/' in the official file
    assert pd.isna(slash.apex) and "apex not annotated ('/')" in slash.notes
    assert df.apex.isna().sum() == 1
    assert df.notes.str.contains("apex at clip end").sum() == 4
    assert df.notes.str.contains("apex at clip start").sum() == 1
    excluded = df[df.label == ""]
    assert set(excluded.emotion) == {"fear", "sadness"}
    assert (df.label[df.label != ""] == df.emotion[df.label != ""]).all()


def test_casme2_versions_differ_only_in_emotions(annotations_dir):
    old = read("casme2", annotations_dir / CASME2_2014)
    new = read("casme2", annotations_dir / CASME2_2019)
    assert old.emotion.value_counts().to_dict() == {
        "others": 99,
        "disgust": 63,
        "happiness": 32,
        "repression": 27,
        "surprise": 25,
        "sadness": 7,
        "fear": 2,
    }
    changed = old[old.emotion != new.emotion]
    assert sorted(changed["clip"]) == ["EP07_01", "EP07_04f", "EP10_03"] and set(
        changed.subject
    ) == {"sub24"}
    assert set(new.loc[changed.index, "emotion"]) == {"surprise"}
    pd.testing.assert_frame_equal(
        old[["onset", "apex", "offset"]], new[["onset", "apex", "offset"]]
    )


def test_casme2_resaved_variants(annotations_dir, tmp_path):
    """Header moved down, blank columns dropped, subject as int / 'sub01' / '1': same manifest."""
    src = annotations_dir / CASME2_2014
    ref = read("casme2", src)
    rows = sheet_rows(src)
    header = [c for c in rows[0] if c is not None]
    keep = [i for i, c in enumerate(rows[0]) if c is not None]
    body = [[r[i] for i in keep] for r in rows[1:]]
    subject_styles = [lambda s: int(s), lambda s: f"sub{s}", lambda s: str(int(s))]
    for k, style in enumerate(subject_styles):
        variant = (
            [["CASME II coding (re-saved copy)"], [], [None, "note"]]
            + [header]
            + [[style(r[0])] + r[1:] for r in body]
        )
        path = write_xlsx(tmp_path / f"casme2_{k}.xlsx", variant)
        got = read("casme2", path)
        pd.testing.assert_frame_equal(frames_of(got), frames_of(ref))
        assert (got.frame_template == ref.frame_template).all()


def test_casme2_csv_copy(annotations_dir, tmp_path):
    src = annotations_dir / CASME2_2014
    path = tmp_path / "casme2.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["" if c is None else c for c in r] for r in sheet_rows(src)])
    pd.testing.assert_frame_equal(frames_of(read("casme2", path)), frames_of(read("casme2", src)))


def test_apex_rules_on_variant(tmp_path):
    header = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion"]
    rows = [
        header,
        ["01", "EP01_01", 10, "/", 30, "happiness"],  # A1
        ["01", "EP01_02", 10, -1, 30, "happiness"],  # A1
        ["01", "EP01_03", 10, "-1", 30, "happiness"],  # A1 (text)
        ["01", "EP01_04", 10, 50, 30, "happiness"],  # A2
        ["01", "EP01_05", 10, 5, 30, "happiness"],  # A2
        ["01", "EP01_06", 10, 30, 30, "disgust"],  # A3 end
        ["01", "EP01_07", 10, 10, 30, "disgust"],  # A3 start
        ["01", "EP01_08", 12, 12, 12, "disgust"],  # single frame
        ["02", "EP02_01", 40, 35, 30, "others"],  # D onset > offset
        ["02", "EP02_02", "", 35, 40, "others"],  # D no onset
        ["01", "EP01_01", 10, 20, 30, "others"],  # U duplicate
        ["02", "EP02_03", 10.0, "20", "30", "Surprise"],
    ]  # numbers as float / text
    path = write_xlsx(tmp_path / "apex.xlsx", rows)
    with pytest.warns(CodingWarning, match="dropped 3 row"):
        df = datasets.get("casme2").read(path)
    assert len(df) == 9
    notes = dict(zip(df["clip"], df.notes))
    apex = dict(zip(df["clip"], df.apex))
    assert pd.isna(apex["EP01_01"]) and notes["EP01_01"] == "apex not annotated ('/')"
    assert pd.isna(apex["EP01_02"]) and notes["EP01_02"] == "apex not annotated ('-1')"
    assert pd.isna(apex["EP01_03"]) and notes["EP01_03"] == "apex not annotated ('-1')"
    assert (
        pd.isna(apex["EP01_04"]) and notes["EP01_04"] == "apex 50 outside [10, 30], will be spotted"
    )
    assert pd.isna(apex["EP01_05"]) and "outside" in notes["EP01_05"]
    assert apex["EP01_06"] == 30 and notes["EP01_06"] == "apex at clip end"
    assert apex["EP01_07"] == 10 and notes["EP01_07"] == "apex at clip start"
    assert apex["EP01_08"] == 12 and notes["EP01_08"] == "single-frame clip"
    assert (
        row(df, "sub02", "EP02_03").onset == 10 and row(df, "sub02", "EP02_03").label == "surprise"
    )
    reasons = {d["key"]: d["reason"] for d in df.attrs["dropped"]}
    assert reasons["sub02/EP02_01"] == "onset 40 > offset 30"
    assert "not annotated" in reasons["sub02/EP02_02"]
    assert "duplicate" in reasons["sub01/EP01_01"]
    assert row(df, "sub01", "EP01_01").emotion == "happiness"  # the first of the duplicates is kept


def test_frame_number_cells():
    assert [
        frame_number(v)
        for v in (46, 46.0, "46", " 46 ", "46.0", True, "/", "-1", -1, 46.5, None, "", "x1")
    ] == [46, 46, 46, 46, 46, None, None, None, None, None, None, None, None]


@pytest.mark.parametrize(
    "module,values,expected",
    [
        (casme2, [1, 1.0, "1", "01", "sub01", "sub1", " 01 "], "sub01"),
        (samm, [6, "6", "06", "006", 6.0], "006"),
        (smic, [1, "1", "01", "s1", "s01", "S01"], "s1"),
    ],
)
def test_subject_normalisation(module, values, expected):
    assert {module.canonical_subject(v) for v in values} == {expected}


def test_subject_without_number_is_refused(tmp_path):
    path = write_xlsx(
        tmp_path / "bad.xlsx",
        [
            ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion"],
            ["subX", "EP01_01", 1, 2, 3, "others"],
        ],
    )
    with pytest.raises(AnnotationError, match=r"bad.xlsx row 2: CASME II subject code 'subX'"):
        datasets.get("casme2").read(path)


# ------------------------------------------------------------------ wrong files


def test_wrong_files_name_the_file_and_the_columns(annotations_dir, tmp_path):
    with pytest.raises(
        AnnotationError, match=r"SAMM_Micro_FACS_Codes_v2.xlsx.*OnsetFrame, ApexFrame"
    ):
        datasets.get("casme2").read(annotations_dir / SAMM)
    with pytest.raises(AnnotationError, match=r"CASME2-coding-20140508.xlsx.*Onset Frame"):
        datasets.get("samm").read(annotations_dir / CASME2_2014)
    with pytest.raises(AnnotationError, match=r"CAS\(ME\)\^2code.*OnsetF"):
        datasets.get("smic_hs").read(annotations_dir / CASME_SQ)
    with pytest.raises(AnnotationError, match=r"CASME2-coding-20140508.xlsx.*11 columns"):
        datasets.get("casme_sq").read(annotations_dir / CASME2_2014)
    with pytest.raises(AnnotationError, match=r"no sheet 'NIR'"):
        datasets.get("smic_nir").read(annotations_dir / SMIC)
    text = tmp_path / "coding.json"
    text.write_text("{}")
    with pytest.raises(
        AnnotationError, match=r"coding.json is not an .xlsx or .csv file.*OnsetFrame"
    ):
        datasets.get("casme2").read(text)
    fake = tmp_path / "fake.xlsx"
    fake.write_text("Subject,Filename\n")
    with pytest.raises(AnnotationError, match=r"fake.xlsx is not a readable .xlsx"):
        datasets.get("samm").read(fake)
    with pytest.raises(AnnotationError, match="does not exist"):
        datasets.get("samm").read(tmp_path / "missing.xlsx")
    with pytest.raises(AnnotationError, match="needs its coding file"):
        datasets.get("casme2").read(None)


# ------------------------------------------------------------------ SAMM


def test_samm_real_file(annotations_dir):
    df = read("samm", annotations_dir / SAMM)
    assert len(df) == 159 and df.subject.nunique() == 29
    assert df.emotion.value_counts().to_dict() == {
        "Anger": 57,
        "Other": 26,
        "Happiness": 26,
        "Surprise": 15,
        "Contempt": 12,
        "Disgust": 9,
        "Fear": 8,
        "Sadness": 6,
    }
    r = row(df, "006", "006_1_2")
    assert (r.onset, r.apex, r.offset) == (5562, 5588, 5632)
    assert r.frame_template == "006/006_1_2/006_{frame:05d}.jpg"
    assert r.frame_template.format(frame=r.onset).endswith("006_05562.jpg")
    assert df.apex.notna().all() and (df.notes == "").all()
    assert (df.label != "").sum() == 136 and set(df.emotion[df.label == ""]) == {
        "Disgust",
        "Fear",
        "Sadness",
    }


def test_samm_resaved_variants(annotations_dir, tmp_path):
    """Preamble removed, blank/unused columns dropped, subject as int 6, apex typo outside the interval."""
    src = annotations_dir / SAMM
    ref = read("samm", src)
    rows = sheet_rows(src)
    h = next(i for i, r in enumerate(rows) if r[0] == "Subject")
    header = rows[h]
    keep = [
        i
        for i, c in enumerate(header)
        if c
        in (
            "Subject",
            "Filename",
            "Onset Frame",
            "Apex Frame",
            "Offset Frame",
            "Estimated Emotion",
            "Notes",
        )
    ]
    body = [[r[i] for i in keep] for r in rows[h + 1 :]]
    for r in body:
        r[0] = int(r[0])
    path = write_xlsx(
        tmp_path / "samm_nopreamble.xlsx", [[header[i] for i in keep]] + body, sheet="MICRO_ONLY"
    )
    got = read("samm", path)
    pd.testing.assert_frame_equal(frames_of(got), frames_of(ref))
    assert (got.subject.str.len() == 3).all()

    body[0][3] = body[0][4] + 1000  # the circulating apex typo: beyond the offset
    path = write_xlsx(tmp_path / "samm_typo.xlsx", [[header[i] for i in keep]] + body)
    got = read("samm", path)
    first = row(got, "006", "006_1_2")
    assert pd.isna(first.apex) and f"apex {body[0][4] + 1000} outside [5562, 5632]" in first.notes


# ------------------------------------------------------------------ SMIC


def test_smic_real_sheets(annotations_dir):
    hs = read("smic_hs", annotations_dir / SMIC)
    vis = read("smic_vis", annotations_dir / SMIC)
    assert (len(hs), hs.subject.nunique(), len(vis), vis.subject.nunique()) == (162, 16, 71, 8)
    assert hs.emotion.value_counts().to_dict() == {"negative": 70, "positive": 51, "surprise": 41}
    assert hs.apex.isna().all() and vis.apex.isna().all()
    assert hs.notes.str.contains("apex not annotated").all()
    assert (
        hs.notes.str.contains("second interval").sum() == 5
        and vis.notes.str.contains("second interval").sum() == 5
    )
    r = row(hs, "s20", "s20_ne_01")
    assert (r.onset, r.offset, r.fps) == (17581039, 17581055, 100)
    assert r.frame_template == "HS/s20/micro/negative/s20_ne_01/image{frame}.bmp"
    assert row(vis, "s20", "s20_ne_01").frame_template.startswith("VIS/") and vis.fps.eq(25).all()
    odd = row(hs, "s18", "s18_sur_03")  # Emotion 'negative' in a surprise-named clip
    assert odd.emotion == "negative" and "/micro/surprise/" in odd.frame_template
    assert "Emotion says negative" in odd.notes


def test_smic_formulas_are_read_as_cached_values(annotations_dir):
    """OffsetF of the HS sheet is a formula (=D2+K2-1); the manifest holds its cached value."""
    src = annotations_dir / SMIC
    formulas = openpyxl.load_workbook(src)["HS"]
    values = openpyxl.load_workbook(src, data_only=True)["HS"]
    assert str(formulas["E2"].value).startswith("=")
    hs = read("smic_hs", src)
    assert row(hs, "s20", values["B2"].value).offset == values["E2"].value == 17581055


def test_smic_padded_copy_and_uncached_formula(annotations_dir, tmp_path):
    rows = sheet_rows(annotations_dir / SMIC, "HS")
    header, body = rows[0], [r for r in rows[1:] if r[1]]
    padded = [
        [f"s{int(r[0]):02d}", f"s{int(r[0]):02d}_" + r[1].split("_", 1)[1]] + r[2:] for r in body
    ]
    path = write_xlsx(tmp_path / "smic.xlsx", [header] + padded, sheet="HS")
    got = read("smic_hs", path)
    ref = read("smic_hs", annotations_dir / SMIC)
    pd.testing.assert_frame_equal(frames_of(got), frames_of(ref))
    # a formula saved without a cached value reads as empty: the row is dropped, and says so
    padded[0][4] = "=D2+K2-1"
    path = write_xlsx(tmp_path / "smic_formula.xlsx", [header] + padded, sheet="HS")
    with pytest.warns(CodingWarning, match="s20/s20_ne_01: onset/offset not annotated"):
        got = datasets.get("smic_hs").read(path)
    assert len(got) == 161


def test_smic_folder_scan(tmp_path):
    base = tmp_path / "HS"
    clips = {
        ("s1", "negative", "s1_ne_01"): range(120, 131),
        ("s01", "surprise", "s1_sur_02"): range(7, 9),
        ("s2", "positive", "s2_po_01"): range(1000, 1003),
    }
    for (subject, emotion, clip), numbers in clips.items():
        d = base / subject / "micro" / emotion / clip
        d.mkdir(parents=True)
        for n in numbers:
            (d / f"image{n:06d}.bmp").write_bytes(b"")
        (d / "Thumbs.db").write_bytes(b"")
    (base / "s2" / "micro" / "negative" / "s2_ne_09").mkdir(parents=True)  # empty clip folder
    with pytest.warns(CodingWarning, match="s2/s2_ne_09: no numbered image frames"):
        df = datasets.get("smic_hs").read(None, tmp_path)
    assert list(zip(df.subject, df["clip"], df.onset, df.offset, df.emotion)) == [
        ("s1", "s1_ne_01", 120, 130, "negative"),
        ("s1", "s1_sur_02", 7, 8, "surprise"),
        ("s2", "s2_po_01", 1000, 1002, "positive"),
    ]
    assert df.apex.isna().all() and (df.label == df.emotion).all()
    # the template points at the folder as found (here padded 's01')
    assert (
        row(df, "s1", "s1_sur_02").frame_template
        == "HS/s01/micro/surprise/s1_sur_02/image{frame}.bmp"
    )
    with pytest.raises(LayoutError, match="VIS is not a folder"):
        datasets.get("smic_vis").read(None, tmp_path)
    with pytest.raises(LayoutError, match="give the SMIC-E annotation file or the dataset root"):
        datasets.get("smic_hs").read(None, None)


# ------------------------------------------------------------------ CAS(ME)^2


def test_casme_sq_real_file(annotations_dir):
    df = read("casme_sq", annotations_dir / CASME_SQ)
    assert len(df) == 357 and df.subject.nunique() == 22
    kinds = casme_sq.expression_type(df)
    assert kinds.value_counts().to_dict() == {"macro": 300, "micro": 57}
    assert not df.duplicated(["subject", "clip"]).any()
    r = row(df, "s15", "anger1_1")
    assert (r.onset, r.apex, r.offset) == (557, 572, 608)
    assert r.frame_template == "rawpic/s15/15_0401girlcrashing/img{frame}.jpg" and r.fps == 30
    repaired = df[df.notes.str.contains("offset 0 repaired")]
    assert len(repaired) == 44 and set(kinds[repaired.index]) == {"macro"}
    expected = (2 * repaired.apex - repaired.onset).clip(upper=repaired.onset + 120)
    assert (repaired.offset == expected).all()
    outside = df[df.notes.str.contains("outside")]
    assert len(outside) == 4 and outside.apex.isna().all() and df.apex.isna().sum() == 4
    assert (df.onset <= df.offset).all()
    typo = df[df.emotion == "happyiness"]
    assert len(typo) == 1 and typo.label.iloc[0] == "positive"
    assert set(df.label) == {"negative", "positive", "surprise", ""}
    assert set(df.emotion[df.label == ""]) == {"confused", "helpless", "pain", "sympathy"}


def test_casme_sq_variants(annotations_dir, tmp_path):
    with open(annotations_dir / CASME_SQ, newline="") as f:
        rows = list(csv.reader(f))
    rows[1][1] = rows[0][1]  # same clip id twice in s15 (different videos)
    rows[1][10] = "s15/15_0999other"
    rows[2][3] = "0"  # offset 0 with an apex that cannot bound it (row 3 has offset 0)
    header = [
        "subject",
        "clip",
        "onset",
        "apex",
        "offset",
        "au",
        "emotion4",
        "type",
        "emotion",
        "dur",
        "video",
    ]
    path = tmp_path / "casme_sq.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    with pytest.warns(CodingWarning, match=r"s15/anger2_1: offset 0"):
        df = datasets.get("casme_sq").read(path)
    assert len(df) == 356
    assert {"anger1_1@15_0401girlcrashing", "anger1_1@15_0999other"} <= set(df["clip"])
    assert df[df["clip"].str.contains("@")].notes.str.contains("made unique").all()
    short = tmp_path / "short.csv"
    short.write_text("1,anger1_1,557,572,608\n")
    with pytest.raises(AnnotationError, match="short.csv.*11 columns"):
        datasets.get("casme_sq").read(short)


# ------------------------------------------------------------------ manifests on disk


def test_read_manifest_round_trip_and_errors(annotations_dir, tmp_path):
    df = read("casme2", annotations_dir / CASME2_2014)
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    back = datasets.read_manifest(path)
    pd.testing.assert_frame_equal(back, df, check_like=False)
    samples = datasets.to_samples(back)
    assert samples[0].key == "casme2/sub01/EP02_01f" and samples[0].apex == 59
    assert next(s for s in samples if s.clip == "EP12_01f").apex is None

    broken = df.drop(columns=["fps"])
    broken.to_csv(path, index=False)
    with pytest.raises(AnnotationError, match=r"m.csv lacks column\(s\) fps"):
        datasets.read_manifest(path)
    bad = df.astype({"onset": object})
    bad.loc[3, "onset"] = "4x"
    bad.to_csv(path, index=False)
    with pytest.raises(AnnotationError, match=r"m.csv row 5: onset '4x' is not a frame number"):
        datasets.read_manifest(path)
    pd.concat([df, df.iloc[:1]]).to_csv(path, index=False)
    with pytest.raises(AnnotationError, match="casme2/sub01/EP02_01f appears twice"):
        datasets.read_manifest(path)


# ------------------------------------------------------------------ CLI


def test_cli_datasets_and_manifest(annotations_dir, tmp_path):
    from microfer.cli import cli

    runner = CliRunner()
    listing = runner.invoke(cli, ["datasets"])
    assert listing.exit_code == 0, listing.output
    for name in datasets.names():
        assert f"{name}  (" in listing.output
    # SMIC's folder scan is what `manifest` does; `prepare` without --coding takes the shipped list
    assert (
        "`microfer prepare smic_hs` without --coding/--manifest prepares the shipped manifest"
        in listing.output
    )
    assert runner.invoke(cli, ["manifest", "--help"]).exit_code == 0

    out = tmp_path / "casme2.csv"
    result = runner.invoke(
        cli,
        ["manifest", "casme2", "--coding", str(annotations_dir / CASME2_2014), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert (
        "rows: 255" in result.output
        and "subjects: 26" in result.output
        and "apex null: 1" in result.output
    )
    assert "disgust 63" in result.output and "dropped rows: 0" in result.output
    assert len(datasets.read_manifest(out)) == 255

    messy = write_xlsx(
        tmp_path / "messy.xlsx",
        [
            ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion"],
            [1, "EP01_01", 10, "/", 30, "happiness"],
            [2, "EP02_01", 40, 35, 30, "others"],
        ],
    )
    result = runner.invoke(
        cli, ["manifest", "casme2", "--coding", str(messy), "--out", str(tmp_path / "m.csv")]
    )
    assert result.exit_code == 3, result.output  # written, one row dropped (listed)
    assert "rows: 1" in result.output and "apex null: 1" in result.output
    assert "dropped rows: 1\n  sub02/EP02_01: onset 40 > offset 30" in result.output

    wrong = runner.invoke(
        cli, ["manifest", "casme2", "--coding", str(annotations_dir / SAMM), "--out", str(out)]
    )
    assert isinstance(wrong.exception, AnnotationError)
    assert len(datasets.read_manifest(out)) == 255  # the earlier manifest is untouched


def test_cli_main_prints_one_line_and_exits_2(annotations_dir, tmp_path, monkeypatch, capsys):
    from microfer.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "microfer",
            "manifest",
            "samm",
            "--coding",
            str(annotations_dir / CASME2_2014),
            "--out",
            str(tmp_path / "x.csv"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: SAMM coding file") and "\n" not in err
    assert not (tmp_path / "x.csv").exists()


def test_manifest_resaved_by_pandas_keeps_canonical_ids(tmp_path):
    """A manifest round-tripped through pandas loses SAMM padding ('006' -> 6) and turns
    frame numbers with gaps into floats ('184.0'): read_manifest restores both."""
    from microfer.datasets import read_manifest

    src = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "dataset": ["samm", "casme2"],
            "subject": ["006", "sub01"],
            "clip": ["006_1_2", "EP02_01f"],
            "onset": [10, 46],
            "apex": [None, 59],
            "offset": [40, 86],
            "emotion": ["Anger", "happiness"],
            "label": ["Anger", "happiness"],
            "frame_template": ["006/006_1_2/006_{frame:05d}.jpg", "sub01/EP02_01f/img{frame}.jpg"],
            "fps": [200.0, 200.0],
            "notes": ["", ""],
        }
    ).to_csv(src, index=False)
    resaved = tmp_path / "resaved.csv"
    pd.read_csv(src).to_csv(resaved, index=False)  # subject 6, apex 59.0
    assert "6," in resaved.read_text() and "59.0" in resaved.read_text()
    df = read_manifest(resaved)
    assert df["subject"].tolist() == ["006", "sub01"]
    assert df["apex"].tolist()[1] == 59 and pd.isna(df["apex"].tolist()[0])
