"""Labelled macro-expression samples for pretraining: prepare caches and face-image folders.

Sources
- a prepare cache of macro clips, labelled by the `emotion` of the manifest rows it was
  prepared from (matched on dataset / subject / clip) -- any input representation;
- an image folder with split folders, ROOT/<split>/<emotion>/*.png|jpg (FER-2013 layout);
- an image folder WITHOUT split folders, ROOT/<emotion>/<file>, whose file names carry the
  subject (CK+: S<subject>_<sequence>_<frame>.png). It is split by SUBJECT, never by image:
  the same person's other frames in the test set would make the test a memory test.

Image faces are still faces, so they only give the "apex" representation. They are read
as grey by default and kept as 3 equal channels: the micro-expression apex crops the
extractor later sees are mostly grey, and FER-2013 / CK+ are grey anyway.

Labels from every source are mapped onto one set (`normalise_label`), so "angry" (FER)
and "anger" (CK+) are one class.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from microfer.clip.cache import open_cache
from microfer.clip.representation import check_kind, face_to_input, to_input
from microfer.datasets import read_manifest
from microfer.errors import MicroferError
from microfer.learn.augment import apply as apply_augment

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
MERGE_KEYS = ["dataset", "subject", "clip"]
CK_SUBJECT_PATTERN = r"S(\d+)_"
# synonyms -> the one name of each emotion (FER-2013 folder names, CK+ folder names, ME coding
# files incl. a typo seen in CAS(ME)^2); anything else is kept, lower-cased
LABEL_SYNONYMS = {
    "angry": "anger",
    "sad": "sadness",
    "happiness": "happy",
    "happyiness": "happy",
    "surprised": "surprise",
    "fearful": "fear",
    "disgusted": "disgust",
}


def normalise_label(value) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    text = text.strip().lower()
    return LABEL_SYNONYMS.get(text, text)


@dataclass
class MacroSet:
    """Labelled macro-expression samples, ready for the network.

    Clip-derived samples are stored as network inputs (N1, 3, S, S) float32; image
    samples as uint8 BGR faces (N2, S, S, 3) (4x less memory for large image sets) and
    converted batch by batch. Sample i < N1 is inputs[i], else faces[i - N1].
    `parts` describes where the samples came from (one dict per source), for the card.
    """

    representation: str
    input_size: int
    labels: list[str]  # sorted label set; y indexes it
    y: np.ndarray  # (N,) int64
    keys: list[str]
    inputs: np.ndarray  # (N1, 3, S, S) float32
    faces: np.ndarray  # (N2, S, S, 3) uint8
    sources: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    parts: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.y.size)

    def batch(self, idx: np.ndarray, augment: Optional[np.ndarray] = None) -> np.ndarray:
        """Network inputs of samples `idx`; `augment` (len(idx), K) parameters from
        `augment.draw` are applied to image faces (clip inputs carry vectors or differences
        that a rotation or a brightness change would falsify, so they only get flips)."""

        n1 = self.inputs.shape[0]
        out = np.empty((len(idx), 3, self.input_size, self.input_size), np.float32)
        for j, i in enumerate(idx):
            if i < n1:
                out[j] = self.inputs[i]
            else:
                face = self.faces[i - n1]
                out[j] = face_to_input(face if augment is None else apply_augment(face, augment[j]))
        return out

    def data_hash(self) -> str:
        h = hashlib.sha256()
        h.update(
            json.dumps(
                {
                    "rep": self.representation,
                    "size": self.input_size,
                    "labels": self.labels,
                    "keys": self.keys,
                    "y": self.y.tolist(),
                }
            ).encode()
        )
        h.update(np.ascontiguousarray(self.inputs).tobytes())
        h.update(np.ascontiguousarray(self.faces).tobytes())
        return h.hexdigest()


def _resize_chw(x: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if x.shape[1:] == (size, size):
        return x
    return cv2.resize(x.transpose(1, 2, 0), (size, size), interpolation=cv2.INTER_AREA).transpose(
        2, 0, 1
    )


def _counts(labels: Sequence[str], y: np.ndarray) -> dict[str, int]:
    return {l: int((y == i).sum()) for i, l in enumerate(labels)}


def load_cache_samples(
    cache,
    manifest,
    representation: str,
    input_size: int = 128,
    label_column: str = "emotion",
    progress: bool = False,
) -> MacroSet:
    """Macro clips of a prepare cache, labelled from the manifest rows they came from."""

    check_kind(representation)
    source = open_cache(cache)
    merged, skipped = _labelled_entries(source.index(), manifest, label_column)
    keys = merged["key"].astype(str).tolist()
    arrays = []
    iterator = keys
    if progress:
        from tqdm import tqdm

        iterator = tqdm(keys, desc="loading macro clips", unit="clip", leave=False, disable=None)
    for k in iterator:
        arrays.append(_resize_chw(to_input(source.load(k), representation, k), input_size))
    labels = sorted(set(merged["_label"]))
    y = np.array([labels.index(v) for v in merged["_label"]], np.int64)
    inputs = (
        np.stack(arrays).astype(np.float32)
        if arrays
        else np.zeros((0, 3, input_size, input_size), np.float32)
    )
    where = f"cache:{getattr(source, 'dir', cache)}"
    return MacroSet(
        representation,
        input_size,
        labels,
        y,
        keys,
        inputs,
        np.zeros((0, input_size, input_size, 3), np.uint8),
        sources=[where],
        skipped={k: v for k, v in skipped.items() if v},
        parts=[
            {
                "source": where,
                "kind": "prepare cache",
                "representation": representation,
                "n": int(y.size),
                "class_counts": _counts(labels, y),
            }
        ],
    )


def _labelled_entries(index: pd.DataFrame, manifest, label_column: str):
    """(the cache's ok entries with a normalised label in "_label", counts of what was left out)."""
    if isinstance(manifest, pd.DataFrame):
        man = manifest.copy()
    else:
        man = read_manifest(Path(manifest))
    if label_column not in man.columns:
        raise MicroferError(
            f"manifest has no column {label_column!r} to label macro samples "
            f"(columns: {', '.join(man.columns)})"
        )
    for df in (man, index):
        for c in MERGE_KEYS:
            if c not in df.columns:
                raise MicroferError(f"manifest / cache index lacks column {c!r}")
            df[c] = df[c].astype(str)
    ok = index[index["status"].astype(str) == "ok"].drop_duplicates(MERGE_KEYS, keep="last")
    merged = ok.merge(
        man[MERGE_KEYS + [label_column]].drop_duplicates(MERGE_KEYS), on=MERGE_KEYS, how="left"
    )
    merged["_label"] = merged[label_column].map(normalise_label)
    skipped = {
        "failed in the cache": int((index["status"].astype(str) != "ok").sum()),
        "no manifest row / no label": int((merged["_label"] == "").sum()),
    }
    merged = merged[merged["_label"] != ""].sort_values("key").reset_index(drop=True)
    return merged, skipped


# ---------------------------------------------------------------------------- image folders
def list_images(base: Path, expected: str) -> list[Path]:
    """Image files in the <emotion>/ sub-folders of `base` (sorted), or an error naming `expected`."""
    if not base.is_dir():
        raise MicroferError(f"{base}: image folder not found (expected {expected})")
    files = sorted(
        p
        for d in sorted(base.iterdir())
        if d.is_dir()
        for p in d.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise MicroferError(f"{base}: no images in <emotion>/ sub-folders (expected {expected})")
    return files


def _read_faces(files: Sequence[Path], input_size: int, grey: bool, progress: bool, desc: str):
    """(faces (N, S, S, 3) uint8 BGR, indices of the files read); unreadable files are left out."""
    import cv2

    faces, read = [], []
    iterator = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc=desc, unit="img", leave=False, disable=None)
    for i, p in enumerate(iterator):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
        if img is None:
            continue
        img = cv2.resize(img, (input_size, input_size), interpolation=cv2.INTER_AREA)
        faces.append(np.repeat(img[..., None], 3, axis=2) if grey else img)
        read.append(i)
    return (np.stack(faces) if faces else np.zeros((0, input_size, input_size, 3), np.uint8)), read


def _image_set(
    files: Sequence[Path],
    base: Path,
    source: str,
    labels: list[str],
    input_size: int,
    grey: bool,
    progress: bool,
    part: dict[str, Any],
) -> MacroSet:
    faces, read = _read_faces(files, input_size, grey, progress, f"loading {source}")
    kept = [files[i] for i in read]
    y = np.array([labels.index(normalise_label(p.parent.name)) for p in kept], np.int64)
    keys = [f"{source}/{p.relative_to(base).as_posix()}" for p in kept]
    unreadable = len(files) - len(kept)
    part = {
        "source": source,
        "path": str(base),
        "colour": "grey, 3 equal channels" if grey else "BGR",
        **part,
        "n": int(y.size),
        "class_counts": _counts(labels, y),
    }
    return MacroSet(
        "apex",
        input_size,
        labels,
        y,
        keys,
        np.zeros((0, 3, input_size, input_size), np.float32),
        faces,
        sources=[f"images:{base}"],
        skipped={"unreadable image": unreadable} if unreadable else {},
        parts=[part],
    )


def load_image_folder(
    root, split: str = "train", input_size: int = 128, progress: bool = False, grey: bool = True
) -> MacroSet:
    """Face images ROOT/<split>/<emotion>/*.png|jpg (FER-2013 layout) -> 'apex' samples.

    The label set is that of the split's emotion folders (not of the images read), so a
    test split and a train split of one source agree on it.
    """
    base = Path(root) / split
    files = list_images(base, f"ROOT/{split}/<emotion>/*.png")
    labels = sorted({normalise_label(p.parent.name) for p in files})
    return _image_set(
        files,
        base,
        f"{Path(root).name}/{split}",
        labels,
        input_size,
        grey,
        progress,
        {"split": split},
    )


def split_subjects(
    subjects: Sequence[str], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train, test) subject ids: deterministic in (set of subjects, fraction, seed).

    Subjects are ranked by sha256("<seed>:<subject>") -- a stable hash, not Python's
    salted hash() -- and the first round(fraction x n) go to test (at least one, and at
    least one subject stays for training).
    """
    uniq = sorted(set(str(s) for s in subjects))
    if not 0.0 < test_fraction < 1.0:
        raise MicroferError(f"test fraction must be between 0 and 1, got {test_fraction}")
    if len(uniq) < 2:
        raise MicroferError(f"a subject split needs at least 2 subjects, found {len(uniq)}")
    ranked = sorted(uniq, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    k = min(max(1, int(round(test_fraction * len(uniq)))), len(uniq) - 1)
    return sorted(ranked[k:]), sorted(ranked[:k])


def files_by_subject(
    root, subject_pattern: str = CK_SUBJECT_PATTERN, test_fraction: float = 0.2, split_seed: int = 0
) -> tuple[list[Path], list[str], tuple[list[str], list[str]]]:
    """(image files, the subject of each, (train subjects, test subjects)) of a CK+-layout folder."""
    base = Path(root)
    files = list_images(base, "ROOT/<emotion>/<subject-coded file name>")
    try:
        pattern = re.compile(subject_pattern)
    except re.error as exc:
        raise MicroferError(
            f"subject pattern {subject_pattern!r} is not a regular expression ({exc})"
        ) from None
    subjects = []
    for p in files:
        m = pattern.search(p.name)
        if m is None or not m.groups():
            raise MicroferError(
                f"{p}: no subject id in the file name (pattern {subject_pattern!r}, "
                f"its first group is the subject)"
            )
        subjects.append(m.group(1))
    return files, subjects, split_subjects(subjects, test_fraction, split_seed)


def load_images_by_subject(
    root,
    subject_pattern: str = CK_SUBJECT_PATTERN,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    input_size: int = 128,
    progress: bool = False,
    grey: bool = True,
) -> tuple[MacroSet, MacroSet]:
    """Face images ROOT/<emotion>/<file> with the subject in the file name (CK+ layout)
    -> (train, test) 'apex' sets split by subject (`split_subjects`); every file must
    name its subject (group 1 of `subject_pattern`), else the split could leak."""
    base = Path(root)
    files, subjects, (train_ids, test_ids) = files_by_subject(
        base, subject_pattern, test_fraction, split_seed
    )
    labels = sorted({normalise_label(p.parent.name) for p in files})
    split = {
        "split": "by subject",
        "subject_pattern": subject_pattern,
        "test_fraction": test_fraction,
        "split_seed": split_seed,
        "rule": "subjects ranked by sha256('<split_seed>:<subject>'), "
        "first round(test_fraction x n) are test",
    }
    sets = []
    for name, ids in (("train", set(train_ids)), ("test", set(test_ids))):
        chosen = [p for p, s in zip(files, subjects) if s in ids]
        sets.append(
            _image_set(
                chosen,
                base,
                f"{base.name}/{name}",
                labels,
                input_size,
                grey,
                progress,
                {**split, "subset": name, "subjects": sorted(ids)},
            )
        )
    return sets[0], sets[1]


def combine(sets: Sequence[MacroSet]) -> MacroSet:
    """One MacroSet from several (same representation and size); the label set is the union."""
    sets = [s for s in sets if s is not None]
    if not sets:
        raise MicroferError(
            "no macro-expression data given (pass --cache with --manifest, and/or --images)"
        )
    if len({(s.representation, s.input_size) for s in sets}) != 1:
        raise MicroferError(
            "macro data sources disagree on representation / input size "
            "(an image folder only provides the 'apex' representation)"
        )
    if len(sets) == 1:
        return sets[0]
    labels = sorted(set().union(*(s.labels for s in sets)))
    # clip-derived inputs first, then images (MacroSet.batch relies on this order)
    ys = [
        np.array([labels.index(s.labels[i]) for i in s.y[: s.inputs.shape[0]]], np.int64)
        for s in sets
    ] + [
        np.array([labels.index(s.labels[i]) for i in s.y[s.inputs.shape[0] :]], np.int64)
        for s in sets
    ]
    keys = [k for s in sets for k in s.keys[: s.inputs.shape[0]]] + [
        k for s in sets for k in s.keys[s.inputs.shape[0] :]
    ]
    skipped: dict[str, int] = {}
    for s in sets:
        for k, v in s.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return MacroSet(
        sets[0].representation,
        sets[0].input_size,
        labels,
        np.concatenate(ys),
        keys,
        np.concatenate([s.inputs for s in sets]),
        np.concatenate([s.faces for s in sets]),
        sources=[x for s in sets for x in s.sources],
        skipped=skipped,
        parts=[p for s in sets for p in s.parts],
    )
