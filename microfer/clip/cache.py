"""Resumable store of prepared clips, keyed by the settings that made them.

Layout:
    root/<settings_key>/settings.json                 what the key stands for
    root/<settings_key>/index.csv                     one row per clip: status ok/failed, apex...
    root/<settings_key>/<dataset>/<subject>/<clip>.npz          a prepared clip
    root/<settings_key>/<dataset>/<subject>/<clip>.failed.json  why a clip failed

Every file is written atomically (temporary file + os.replace), so a killed run leaves
either a whole entry or none; the entry files are the truth and index.csv is rebuilt
from them when it lags behind (`sync_index`). Entries are plain arrays plus one JSON
string (np.savez_compressed, loaded with allow_pickle=False): no pickle.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from microfer.errors import MicroferError
from microfer.io import atomic_path, write_json, write_text
from microfer.records import PreparedClip, Sample

INDEX_COLUMNS = [
    "dataset",
    "subject",
    "clip",
    "key",
    "status",
    "reason",
    "stage",
    "onset",
    "apex",
    "offset",
    "apex_source",
    "path",
    "inputs",  # what the entry was built from (clip.layout.inputs_fingerprint); "" = unknown
]
_ARRAYS = ("onset_face", "apex_face", "flow", "strain", "landmarks", "transform", "motion_curve")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
# what numpy raises on a truncated or overwritten .npz: zip, zlib and short-read errors
_DAMAGED = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def _safe(part: str) -> str:
    """A file-name-safe version of one key component (dots alone would climb folders)."""
    part = _UNSAFE.sub("_", str(part))
    return "_" + part if part in ("", ".", "..") or part.startswith(".") else part


def _split_key(key: str) -> tuple[str, str, str]:
    parts = key.split("/", 2)
    if len(parts) != 3:
        raise MicroferError(f"cache key '{key}' is not 'dataset/subject/clip'")
    return parts[0], parts[1], parts[2]


class Cache:
    """Prepared clips of one settings key under `root` (see module docstring)."""

    def __init__(self, root, settings_key: str, settings: dict | None = None):
        self.root = Path(root)
        self.settings_key = settings_key
        self.dir = self.root / settings_key
        self._rows: dict[str, dict] | None = None
        if settings is not None:
            existing = self.dir / "settings.json"
            if not existing.is_file():
                write_json(existing, {"key": settings_key, "settings": settings})

    @classmethod
    def for_settings(cls, root, settings) -> "Cache":
        """The cache of a PrepareSettings (anything with key() and dataclass fields)."""
        return cls(root, settings.key(), asdict(settings))

    # --- paths --------------------------------------------------------------------
    def entry_path(self, key: str) -> Path:
        dataset, subject, clip = _split_key(key)
        return self.dir / _safe(dataset) / _safe(subject) / f"{_safe(clip)}.npz"

    def failure_path(self, key: str) -> Path:
        return self.entry_path(key).with_suffix(".failed.json")

    @staticmethod
    def _key(sample_or_key) -> str:
        return sample_or_key.key if isinstance(sample_or_key, Sample) else str(sample_or_key)

    # --- queries ------------------------------------------------------------------
    def has(self, sample_or_key) -> bool:
        """A prepared entry exists for this sample (failures do not count)."""
        return self.entry_path(self._key(sample_or_key)).is_file()

    def has_failed(self, sample_or_key) -> bool:
        return self.failure_path(self._key(sample_or_key)).is_file()

    def failure(self, sample_or_key) -> dict | None:
        path = self.failure_path(self._key(sample_or_key))
        return _read_json(path) if path.is_file() else None

    # --- writes -------------------------------------------------------------------
    def inputs(self, sample_or_key) -> str:
        """The inputs fingerprint an entry or failure was recorded with ("" = unknown)."""
        row = self._load_rows().get(self._key(sample_or_key))
        return str(row.get("inputs", "") or "") if row else ""

    def save(self, sample: Sample | str, prepared: PreparedClip, inputs: str = "") -> Path:
        key = self._key(sample)
        path = self.entry_path(key)
        meta = {
            "key": key,
            "settings_key": self.settings_key,
            "onset": int(prepared.onset),
            "apex": int(prepared.apex),
            "offset": int(prepared.offset),
            "apex_source": prepared.apex_source,
            "face_box": [int(v) for v in prepared.face_box],
            "notes": prepared.notes,
            "flow_units": prepared.flow_units,
            "inputs": inputs,
        }
        arrays = {name: np.asarray(getattr(prepared, name)) for name in _ARRAYS}
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
        self.failure_path(key).unlink(missing_ok=True)
        self._remember(self._row_ok(key, meta, path))
        return path

    def record_failure(
        self, sample: Sample | str, stage: str, reason: str, inputs: str = ""
    ) -> Path:
        key = self._key(sample)
        path = self.failure_path(key)
        doc = {"key": key, "settings_key": self.settings_key, "stage": stage, "reason": reason}
        write_json(path, {**doc, "inputs": inputs})
        self.entry_path(key).unlink(missing_ok=True)  # an entry from earlier inputs is stale now
        self._remember(self._row_failed(key, stage, reason, path, inputs))
        return path

    def forget_failure(self, sample_or_key) -> None:
        key = self._key(sample_or_key)
        self.failure_path(key).unlink(missing_ok=True)
        if self._rows is not None:
            self._rows.pop(key, None)

    # --- reads --------------------------------------------------------------------
    def load(self, sample_or_key) -> PreparedClip:
        key = self._key(sample_or_key)
        path = self.entry_path(key)
        if not path.is_file():
            raise MicroferError(
                f"no prepared entry for {key} in {self.dir} (run `microfer prepare` first)"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {name: z[name] for name in _ARRAYS}
        except _DAMAGED as exc:
            raise MicroferError(
                f"cache entry {path} is damaged ({type(exc).__name__}: {exc}); run `microfer "
                "prepare` with the same options again: it rebuilds damaged entries"
            ) from None
        return PreparedClip(
            onset=meta["onset"],
            apex=meta["apex"],
            offset=meta["offset"],
            apex_source=meta["apex_source"],
            face_box=tuple(meta["face_box"]),
            notes=meta.get("notes", ""),
            # entries written before flow_units existed all hold pixel flows
            flow_units=meta.get("flow_units", "pixels"),
            **arrays,
        )

    def index(self) -> pd.DataFrame:
        """What was prepared with these settings: one row per clip (ok or failed)."""
        rows = self._load_rows()
        return pd.DataFrame(sorted(rows.values(), key=lambda r: r["key"]), columns=INDEX_COLUMNS)

    # --- index maintenance ----------------------------------------------------------
    def _row_ok(self, key: str, meta: dict, path: Path) -> dict:
        d, s, c = _split_key(key)
        return {
            "dataset": d,
            "subject": s,
            "clip": c,
            "key": key,
            "status": "ok",
            "reason": "",
            "stage": "",
            "onset": meta["onset"],
            "apex": meta["apex"],
            "offset": meta["offset"],
            "apex_source": meta["apex_source"],
            "path": str(path.relative_to(self.dir)),
            "inputs": meta.get("inputs", ""),
        }

    def _row_failed(self, key: str, stage: str, reason: str, path: Path, inputs: str = "") -> dict:
        d, s, c = _split_key(key)
        return {
            "dataset": d,
            "subject": s,
            "clip": c,
            "key": key,
            "status": "failed",
            "reason": reason,
            "stage": stage,
            "onset": "",
            "apex": "",
            "offset": "",
            "apex_source": "",
            "path": str(path.relative_to(self.dir)),
            "inputs": inputs,
        }

    def _load_rows(self) -> dict[str, dict]:
        if self._rows is None:
            self._rows = {}
            index = self.dir / "index.csv"
            if index.is_file():
                df = pd.read_csv(index, dtype=str, keep_default_na=False)
                self._rows = {r["key"]: dict(r) for r in df.to_dict("records")}
        return self._rows

    def _remember(self, row: dict) -> None:
        self._load_rows()[row["key"]] = row

    def flush_index(self) -> None:
        """Rewrite index.csv (atomically) from what this Cache knows, unless it says that already."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "index.csv"
        text = self.index().to_csv(index=False, lineterminator="\n")
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return  # an idempotent rerun leaves every file as it was
        write_text(path, text)

    def sync_index(self) -> None:
        """Make the index agree with the entry files (after a killed run), and drop the
        temporary files a killed writer left behind."""
        rows = self._load_rows()
        if not self.dir.is_dir():
            return
        for tmp in self.dir.rglob(".*"):  # atomic_path temporaries: '.<name>.<random><suffix>'
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
        seen = set()
        for path in self.dir.rglob("*.npz"):
            try:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
            except Exception:  # unreadable despite atomic writes (disk trouble): redo it
                path.unlink(missing_ok=True)
                continue
            seen.add(meta["key"])
            if rows.get(meta["key"], {}).get("status") != "ok":
                rows[meta["key"]] = self._row_ok(meta["key"], meta, path)
        for path in self.dir.rglob("*.failed.json"):
            try:
                info = _read_json(path)
            except MicroferError:  # a damaged failure record: the clip is simply tried again
                path.unlink(missing_ok=True)
                continue
            if info["key"] not in seen:
                seen.add(info["key"])
                rows[info["key"]] = self._row_failed(
                    info["key"], info["stage"], info["reason"], path, info.get("inputs", "")
                )
        for key in [k for k in rows if k not in seen]:
            del rows[key]
        self.flush_index()


def prepare_settings_of(source) -> dict:
    """The settings a prepare cache records in its settings.json ({} when it has none)."""
    directory = getattr(source, "dir", None)
    path = Path(directory) / "settings.json" if directory is not None else None
    if path is None or not path.is_file():
        return {}
    doc = _read_json(path)
    settings = doc.get("settings", {}) if isinstance(doc, dict) else None
    if not isinstance(settings, dict):
        raise MicroferError(f"{path}: 'settings' is not a mapping; the cache folder is damaged")
    return settings


def _read_json(path: Path):
    """A cache's JSON file; MicroferError naming it when it is unreadable or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MicroferError(f"{path}: damaged ({type(exc).__name__}: {exc})") from None


def open_cache(cache):
    """A prepare cache: a Cache object (anything with .index() and .load(key)) or a path.

    A path may be the settings folder (CACHE/<settings_key>, holding index.csv) or the
    top folder CACHE when it holds exactly one settings folder.
    """
    if hasattr(cache, "index") and hasattr(cache, "load"):
        return cache
    path = Path(cache)
    if not path.is_dir():
        raise MicroferError(
            f"{path}: prepare cache folder not found (run `microfer prepare` first)"
        )
    if (path / "index.csv").is_file() or (path / "settings.json").is_file():
        return Cache(path.parent, path.name)
    keys = sorted(
        p.name
        for p in path.iterdir()
        if p.is_dir() and ((p / "index.csv").is_file() or (p / "settings.json").is_file())
    )
    if len(keys) == 1:
        return Cache(path, keys[0])
    if not keys:
        raise MicroferError(
            f"{path}: not a prepare cache (no index.csv here nor in a settings sub-folder)"
        )
    raise MicroferError(
        f"{path}: holds {len(keys)} prepare settings ({', '.join(keys)}); "
        f"pass one of them, e.g. {path / keys[0]}"
    )
