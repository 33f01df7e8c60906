"""Evaluation protocols (`protocols/*.yaml`): which samples, which classes, which folds.

A protocol file holds:
  name, description, reference          text
  manifest                              file name in data_manifests/
  classes                               ordered class names (y = index in this list)
  label_map                             emotion -> class, matched case-insensitively after
                                        stripping; either flat {emotion: class} or per
                                        dataset {dataset: {emotion: class}} ('*' = any
                                        dataset). Unmapped emotions, and datasets
                                        without an entry, are excluded.
  group_by                              [dataset, subject] (LOSO) or [dataset] (leave one
                                        dataset out): the fold key
  metrics                               subset of uf1, uar, accuracy (pooled over folds)
  per_dataset                           also report the metrics per dataset

Class of a manifest row (`Protocol.samples`), for a dataset the label_map covers: the
`label` column when it already is one of the protocol's classes (the shipped composite
manifest stores the official composite class there, which can differ from the emotion,
e.g. SMIC s18_sur_03), otherwise the emotion through `label_map` (e.g. a synthetic
manifest of CASME II / SAMM / SMIC clips with their native emotions and default-protocol
labels); neither -> the row is excluded. Rows of datasets the label_map does not name
(and no '*' entry) are excluded, so a single-dataset protocol ignores other datasets.

Names resolve in a protocols folder, manifests in a data_manifests folder, each looked up in
this order: the env var (MICROFER_PROTOCOLS, MICROFER_MANIFESTS); the checkout's top-level
protocols/ and data_manifests/ (the source of truth, used when microfer runs from a checkout,
e.g. an editable install); the copy a wheel ships as package data (microfer/_shipped/, made
at build time by setup.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional, Union

import numpy as np
import pandas as pd

from microfer.datasets import read_manifest
from microfer.errors import MicroferError
from microfer.io import SHIPPED_DIR, manifests_dir, protocols_dir  # noqa: F401  (importable from here too)

REQUIRED_KEYS = (
    "name",
    "description",
    "manifest",
    "classes",
    "label_map",
    "group_by",
    "metrics",
    "per_dataset",
    "reference",
)
KNOWN_METRICS = ("uf1", "uar", "accuracy")
GROUP_COLUMNS = ("dataset", "subject")
ANY_DATASET = "*"


def _key(text) -> str:
    return str(text).strip().casefold()


@dataclass(frozen=True)
class Fold:
    group: str  # the held-out group, e.g. "casme2/sub01"
    train_idx: np.ndarray  # positions in the samples table
    test_idx: np.ndarray


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    manifest: str
    classes: tuple[str, ...]
    label_map: Mapping[str, Mapping[str, str]] = field(
        hash=False
    )  # dataset or '*' -> emotion key -> class
    group_by: tuple[str, ...]
    metrics: tuple[str, ...]
    per_dataset: bool
    reference: str
    path: Optional[Path] = None

    @property
    def manifest_path(self) -> Path:
        return manifests_dir() / self.manifest

    def class_of(self, dataset: str, emotion: str, label: str = "") -> Optional[str]:
        """The class of one sample (see the module docstring), or None when excluded."""
        scopes = [self.label_map[s] for s in (dataset, ANY_DATASET) if s in self.label_map]
        if not scopes:
            return None  # a dataset the protocol does not cover
        if label in self.classes:
            return label
        key = _key(emotion)
        for mapping in scopes:
            if key in mapping:
                return mapping[key]
        return None

    def samples(self, manifest: Union[pd.DataFrame, str, Path, None] = None) -> pd.DataFrame:
        """The manifest rows this protocol uses, with `y` (class index) and `group` (fold key) added."""

        if manifest is None:
            manifest = self.manifest_path
        df = read_manifest(manifest) if isinstance(manifest, (str, Path)) else manifest
        missing = [
            c for c in ("dataset", "emotion", "label", *self.group_by) if c not in df.columns
        ]
        if missing:
            raise MicroferError(
                f"protocol {self.name}: the manifest lacks column(s) {', '.join(missing)}"
            )
        labels = df["label"].fillna("").astype(str) if len(df) else pd.Series([], dtype=str)
        classes = [
            self.class_of(str(d), str(e), lab)
            for d, e, lab in zip(df["dataset"], df["emotion"].fillna("").astype(str), labels)
        ]
        keep = np.array([c is not None for c in classes], dtype=bool)
        out = df.loc[keep].copy().reset_index(drop=True)
        index = {c: i for i, c in enumerate(self.classes)}
        out["y"] = np.array([index[c] for c, k in zip(classes, keep) if k], dtype=np.int64)
        out["group"] = (
            ["/".join(str(v) for v in vals) for vals in zip(*(out[c] for c in self.group_by))]
            if len(out)
            else []
        )
        out["group"] = out["group"].astype(str)
        return out

    def folds(self, samples: pd.DataFrame) -> list[Fold]:
        """One fold per group (sorted): that group is tested, every other group trains."""
        if "group" not in samples.columns:
            raise MicroferError(
                f"protocol {self.name}: folds() needs the table from samples() (no 'group' column)"
            )
        groups = samples["group"].astype(str).to_numpy()
        out = []
        for g in sorted(set(groups)):
            test = groups == g
            out.append(Fold(g, np.flatnonzero(~test), np.flatnonzero(test)))
        return out


def list_protocols() -> list[str]:
    folder = protocols_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_protocol(name_or_path: Union[str, Path], *, check_manifest: bool = True) -> Protocol:
    """A protocol by name (protocols/<name>.yaml) or by path, validated.

    `check_manifest=False` skips the check that its manifest file exists (for use on a
    manifest given as a table, e.g. a synthetic dataset's).
    """
    path = _protocol_path(str(name_or_path))
    data = _read_yaml(path)

    def bad(problem: str) -> MicroferError:
        return MicroferError(f"protocol file {path}: {problem}")

    if not isinstance(data, dict):
        raise bad("expected a mapping of keys " + ", ".join(REQUIRED_KEYS))
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    classes = _check_classes(data["classes"], bad)
    label_map = _parse_label_map(data["label_map"], classes, bad)
    _check_entries(data, bad)
    manifest = data["manifest"]
    if check_manifest and not (manifests_dir() / manifest).is_file():
        raise bad(f"manifest {manifest} not found in {manifests_dir()}")
    return Protocol(
        name=str(data["name"]),
        description=str(data["description"]).strip(),
        manifest=manifest,
        classes=tuple(classes),
        label_map=label_map,
        group_by=tuple(data["group_by"]),
        metrics=tuple(data["metrics"]),
        per_dataset=data["per_dataset"],
        reference=str(data["reference"]).strip(),
        path=path,
    )


def _protocol_path(text: str) -> Path:
    """A protocol name's shipped file, or the path given; MicroferError when missing."""
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text):
        path = protocols_dir() / f"{text}.yaml"
        if not path.is_file():
            available = ", ".join(list_protocols()) or "none"
            raise MicroferError(f"unknown protocol '{text}' (no {path}); available: {available}")
    if not path.is_file():
        raise MicroferError(f"protocol file {path} does not exist")
    return path


def _read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MicroferError(f"protocol file {path} is not valid YAML: {exc}") from None


def _check_classes(classes, bad) -> list[str]:
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c.strip() for c in classes)
    ):
        raise bad("classes must be a non-empty list of names")
    if len(set(classes)) != len(classes):
        raise bad(f"classes repeat a name: {classes}")
    return classes


def _check_entries(data: dict, bad) -> None:
    """group_by, metrics, per_dataset and manifest are of the kinds a protocol allows."""
    group_by = data["group_by"]
    if (
        not isinstance(group_by, list)
        or not group_by
        or any(g not in GROUP_COLUMNS for g in group_by)
        or "dataset" not in group_by
    ):
        raise bad(f"group_by must be [dataset, subject] or [dataset], got {group_by!r}")
    metrics = data["metrics"]
    if not isinstance(metrics, list) or not metrics or any(m not in KNOWN_METRICS for m in metrics):
        raise bad(
            f"metrics must be a non-empty list of {', '.join(KNOWN_METRICS)}, got {metrics!r}"
        )
    if not isinstance(data["per_dataset"], bool):
        raise bad(f"per_dataset must be true or false, got {data['per_dataset']!r}")
    manifest = data["manifest"]
    if (
        not isinstance(manifest, str)
        or not manifest.endswith(".csv")
        or Path(manifest).name != manifest
    ):
        raise bad(f"manifest must be a csv file name in data_manifests/, got {manifest!r}")


def _parse_label_map(raw, classes, bad) -> Mapping[str, Mapping[str, str]]:
    if not isinstance(raw, dict) or not raw:
        raise bad(
            "label_map must be a non-empty mapping emotion -> class (or dataset -> {emotion: class})"
        )
    nested = all(isinstance(v, dict) for v in raw.values())
    if not nested and any(isinstance(v, dict) for v in raw.values()):
        raise bad(
            "label_map mixes flat entries (emotion: class) and per-dataset ones (dataset: {...})"
        )
    scopes = raw if nested else {ANY_DATASET: raw}
    out = {}
    for scope, mapping in scopes.items():
        entries = {}
        for emotion, target in mapping.items():
            if target not in classes:
                raise bad(
                    f"label_map sends {emotion!r} to {target!r}, which is not one of the classes {classes}"
                )
            entries[_key(emotion)] = target
        out[str(scope)] = MappingProxyType(entries)
    return MappingProxyType(out)
