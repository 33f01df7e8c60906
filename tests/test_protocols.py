"""Protocols: shipped YAML files, class mapping, folds, validation errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from microfer.datasets._coding import manifest_frame
from microfer.errors import MicroferError
from microfer.learn.protocols import Fold, list_protocols, load_protocol

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [
    "casme2-5class",
    "cross-dataset",
    "megc2019-composite",
    "samm-5class",
    "smic-hs-3class",
    "smic-vis-3class",
]


def test_list_protocols():
    assert list_protocols() == SHIPPED


@pytest.mark.parametrize(
    "name,n,groups,counts",
    [
        ("casme2-5class", 246, 26, [32, 25, 63, 27, 99]),
        ("samm-5class", 136, 27, [57, 12, 26, 15, 26]),
        ("smic-hs-3class", 162, 16, [70, 51, 41]),
        ("smic-vis-3class", 71, 8, [24, 28, 19]),
        ("megc2019-composite", 442, 68, [250, 109, 83]),
        ("cross-dataset", 442, 3, [250, 109, 83]),
    ],
)
def test_shipped_protocols_samples_and_folds(name, n, groups, counts):
    p = load_protocol(name)
    s = p.samples()
    assert len(s) == n and s["group"].nunique() == groups
    assert np.bincount(s["y"], minlength=len(p.classes)).tolist() == counts
    folds = p.folds(s)
    assert [f.group for f in folds] == sorted(s["group"].unique())
    seen = np.zeros(len(s), dtype=int)
    for f in folds:
        assert isinstance(f, Fold)
        assert set(s["group"].iloc[f.test_idx]) == {f.group}
        assert f.group not in set(s["group"].iloc[f.train_idx])
        assert len(f.train_idx) + len(f.test_idx) == len(s)
        seen[f.test_idx] += 1
    assert (seen == 1).all()  # every sample is tested exactly once
    again = p.folds(p.samples())
    assert all((a.test_idx == b.test_idx).all() for a, b in zip(folds, again))


def test_group_keys():
    composite = load_protocol("megc2019-composite").samples()
    assert "casme2/sub01" in set(composite["group"]) and "samm/006" in set(composite["group"])
    assert set(load_protocol("cross-dataset").samples()["group"]) == {"casme2", "samm", "smic_hs"}


def test_composite_label_wins_over_emotion():
    s = load_protocol("megc2019-composite").samples()
    odd = s[s["clip"] == "s18_sur_03"].iloc[
        0
    ]  # Emotion 'negative', official composite class surprise
    assert odd["y"] == 2


def synthetic_manifest():
    """Native emotions and default-protocol labels, as a synthetic dataset's manifest has them."""
    rows = [
        ("casme2", "sub01", "EP01", "disgust", "disgust", "negative"),
        ("casme2", "sub01", "EP02", "repression", "repression", "negative"),
        ("casme2", "sub02", "EP03", "happiness", "happiness", "positive"),
        ("casme2", "sub02", "EP04", "surprise", "surprise", "surprise"),
        ("casme2", "sub02", "EP05", "fear", "", None),  # CASME II fear: excluded
        ("casme2", "sub02", "EP06", "others", "others", None),
        ("samm", "006", "006_1_1", "Fear", "", "negative"),  # SAMM Fear: negative
        ("samm", "006", "006_1_2", "Anger", "Anger", "negative"),
        ("samm", "007", "007_1_1", "Other", "Other", None),
        ("samm", "007", "007_1_2", "Happiness", "Happiness", "positive"),
        ("smic_hs", "s1", "s1_ne_01", "negative", "negative", "negative"),
        ("smic_hs", "s1", "s1_sur_01", " Surprise ", "", "surprise"),
    ]
    df = manifest_frame(
        [
            dict(
                dataset=d,
                subject=s,
                clip=c,
                onset=1,
                apex=None,
                offset=9,
                emotion=e,
                label=lab,
                frame_template=f"{s}/{c}/img{{frame}}.jpg",
                fps=100.0,
                notes="",
            )
            for d, s, c, e, lab, _ in rows
        ]
    )
    expected = {(d, c): cls for d, _, c, _, _, cls in rows}
    return df, expected


def test_composite_on_a_synthetic_manifest():
    df, expected = synthetic_manifest()
    p = load_protocol("megc2019-composite")
    s = p.samples(df)
    got = {(r["dataset"], r["clip"]): p.classes[r["y"]] for r in s.to_dict("records")}
    assert got == {k: v for k, v in expected.items() if v is not None}
    assert sorted(set(s["group"])) == [
        "casme2/sub01",
        "casme2/sub02",
        "samm/006",
        "samm/007",
        "smic_hs/s1",
    ]
    assert len(p.folds(s)) == 5


def test_samples_from_a_manifest_path(tmp_path):
    df, _ = synthetic_manifest()
    path = tmp_path / "synth.csv"
    df.to_csv(path, index=False)
    s = load_protocol("casme2-5class").samples(path)
    assert sorted(s["clip"]) == ["EP01", "EP02", "EP03", "EP04", "EP06"]
    assert s["y"].tolist() == [2, 3, 0, 1, 4]


def write_protocol(folder, name="custom", **changes):
    data = yaml.safe_load((REPO / "protocols" / "casme2-5class.yaml").read_text())
    data.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del data[key]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"classes": None}, "missing key(s) classes"),
        ({"classes": []}, "classes must be a non-empty list"),
        ({"classes": ["a", "b", "a"]}, "classes repeat a name"),
        (
            {"label_map": {"happiness": "joy"}},
            "sends 'happiness' to 'joy', which is not one of the classes",
        ),
        ({"group_by": ["subject"]}, "group_by must be"),
        ({"group_by": ["dataset", "clip"]}, "group_by must be"),
        ({"metrics": ["f1"]}, "metrics must be"),
        ({"manifest": "nowhere.csv"}, "manifest nowhere.csv not found"),
        ({"manifest": "../casme2.csv"}, "manifest must be a csv file name"),
    ],
)
def test_validation_names_the_file_and_the_problem(tmp_path, changes, message):
    path = write_protocol(tmp_path, **changes)
    with pytest.raises(MicroferError) as info:
        load_protocol(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_env_overrides_and_unknown_names(tmp_path, monkeypatch):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    df, _ = synthetic_manifest()
    df.to_csv(manifests / "mine.csv", index=False)
    protocols = tmp_path / "protocols"
    protocols.mkdir()
    write_protocol(protocols, "mine", manifest="mine.csv")
    monkeypatch.setenv("MICROFER_PROTOCOLS", str(protocols))
    monkeypatch.setenv("MICROFER_MANIFESTS", str(manifests))
    assert list_protocols() == ["mine"]
    assert len(load_protocol("mine").samples()) == 5
    with pytest.raises(MicroferError, match="unknown protocol 'casme2-5class'.*available: mine"):
        load_protocol("casme2-5class")
    bad = protocols / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(MicroferError, match="broken.yaml is not valid YAML"):
        load_protocol(bad)


def test_manifest_check_can_be_skipped(tmp_path):
    path = write_protocol(tmp_path, manifest="not_shipped.csv")
    p = load_protocol(path, check_manifest=False)
    df, _ = synthetic_manifest()
    assert len(p.samples(df)) == 5
    with pytest.raises(MicroferError, match="folds\\(\\) needs the table from samples"):
        p.folds(df)


def _installed_layout(tmp_path, monkeypatch, *, ship=True):
    """microfer as a wheel installs it: site/microfer/ with the build's _shipped/ copy, no checkout."""
    import shutil

    import microfer.io
    from microfer.learn.protocols import SHIPPED_DIR

    monkeypatch.delenv("MICROFER_PROTOCOLS", raising=False)
    monkeypatch.delenv("MICROFER_MANIFESTS", raising=False)
    package = tmp_path / "site-packages" / "microfer"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if ship:  # what setup.py's build_py copies: protocols/*.yaml, data_manifests/*.csv + README.md
        for folder, patterns in (
            ("protocols", ["*.yaml"]),
            ("data_manifests", ["*.csv", "README.md"]),
        ):
            dest = package / SHIPPED_DIR / folder
            dest.mkdir(parents=True)
            for pattern in patterns:
                for f in (REPO / folder).glob(pattern):
                    shutil.copy2(f, dest / f.name)
    monkeypatch.setattr(microfer.io, "PACKAGE_DIR", package)
    return package


def test_checkout_folders_are_used_from_a_checkout(monkeypatch):
    from microfer.learn.protocols import manifests_dir, protocols_dir

    monkeypatch.delenv("MICROFER_PROTOCOLS", raising=False)
    monkeypatch.delenv("MICROFER_MANIFESTS", raising=False)
    assert protocols_dir() == REPO / "protocols" and manifests_dir() == REPO / "data_manifests"


def test_installed_wheel_finds_its_packaged_protocols_and_manifests(tmp_path, monkeypatch):
    from microfer.learn.protocols import manifests_dir, protocols_dir

    package = _installed_layout(tmp_path, monkeypatch)
    assert protocols_dir() == package / "_shipped" / "protocols"
    assert manifests_dir() == package / "_shipped" / "data_manifests"
    assert list_protocols() == SHIPPED
    p = load_protocol("megc2019-composite")
    assert p.path.parent == protocols_dir() and p.manifest_path.parent == manifests_dir()
    assert len(p.samples()) == 442
    # the env vars still win over the packaged copy
    monkeypatch.setenv("MICROFER_PROTOCOLS", str(tmp_path))
    assert protocols_dir() == tmp_path and list_protocols() == []


def test_installed_without_packaged_data_says_where_it_looked(tmp_path, monkeypatch):
    package = _installed_layout(tmp_path, monkeypatch, ship=False)
    assert list_protocols() == []
    with pytest.raises(
        MicroferError, match="unknown protocol 'casme2-5class'.*_shipped.*available: none"
    ):
        load_protocol("casme2-5class")
    assert not (package.parent / "protocols").exists()
