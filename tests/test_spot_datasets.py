"""Long-video adapters: SAMM-LV on its real csv, and the interval table of both datasets."""

from __future__ import annotations

import warnings

import pytest

from microfer import datasets
from microfer.datasets import samm_lv
from microfer.datasets.long_videos import interval_table
from microfer.errors import AnnotationError

SAMM_LV = "SAMM/SAMM_LongVideos_V2_Release.csv"
CASME_SQ = "CASME_sq/CAS(ME)^2code_final(Updated).csv"


def test_samm_lv_real_csv(annotations_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is dropped
        df = datasets.get("samm_lv").read(annotations_dir / SAMM_LV)
    assert len(df) == 502 and df.subject.nunique() == 30
    table = interval_table(df)
    assert table.type.value_counts().to_dict() == {"macro": 343, "micro": 159}
    assert table.video.nunique() == 147
    r = df[df["clip"] == "006_1_2"].iloc[0]
    assert (r.onset, r.apex, r.offset, r.fps) == (3562, 3588, 3632, 200)
    assert r.frame_template == "SAMM_longvideos/006_1/006_1_{frame:04d}.jpg"
    assert df.apex.isna().sum() == 6  # apex -1 = not annotated
    assert df[df.apex.isna()].notes.str.contains("apex not annotated").all()
    # 037_4_1 is a micro and a macro interval: both kept, the second renamed
    twins = table[table["clip"].str.startswith("037_4_1")]
    assert sorted(twins["clip"]) == ["037_4_1", "037_4_1@1487"] and set(twins.type) == {
        "micro",
        "macro",
    }
    assert set(twins.video) == {"SAMM_longvideos/037_4"}


def test_samm_lv_preamble_free_copy_and_bad_type(annotations_dir, tmp_path):
    lines = (annotations_dir / SAMM_LV).read_text(encoding="utf-8-sig").splitlines()
    body = lines[9:]
    copy = tmp_path / "samm_lv.csv"
    copy.write_text("\n".join(body) + "\n", encoding="utf-8")
    assert len(datasets.get("samm_lv").read(copy)) == 502
    body[1] = body[1].replace("Macro", "Blink")
    copy.write_text("\n".join(body) + "\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"row 2: Type 'Blink' is neither Macro nor Micro"):
        datasets.get("samm_lv").read(copy)


def test_samm_lv_refuses_another_coding_file(annotations_dir):
    with pytest.raises(
        AnnotationError, match="no header row with the expected columns Subject, Filename, Onset"
    ):
        datasets.get("samm_lv").read(annotations_dir / "CASME2/CASME2-coding-20140508.xlsx")


def test_casme_sq_interval_table(annotations_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = interval_table(datasets.get("casme_sq").read(annotations_dir / CASME_SQ))
    assert len(table) == 357 and table.type.value_counts().to_dict() == {"macro": 300, "micro": 57}
    assert table.video.iloc[0].startswith("rawpic/s15/")
    assert (table.groupby("video").onset.apply(lambda s: s.is_monotonic_increasing)).all()


def test_interval_table_refuses_clip_manifests(annotations_dir):
    df = datasets.get("samm").read(annotations_dir / "SAMM/SAMM_Micro_FACS_Codes_v2.xlsx")
    with pytest.raises(AnnotationError, match="no type=macro\\|micro note"):
        interval_table(df)


def test_samm_lv_video_names():
    assert samm_lv.video_of("006_1_3") == "006_1"
    assert (
        samm_lv.interval_type("Micro - 1/2") == "micro"
        and samm_lv.interval_type(" macro") == "macro"
    )
    assert samm_lv.interval_type("blink") == ""
