"""A protocol's samples, and which of them the prepare cache holds (and why not the others).

The first step of both `loso` and `train` (`learn.evaluate.gather_features`): samples come
from the protocol's shipped manifest or a given one; those without an ok cache entry are
excluded with the reason, and a cache prepared from other frames than the manifest names
is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from microfer.datasets import read_manifest
from microfer.errors import MicroferError
from microfer.learn.protocols import load_protocol

# what identifies a clip in manifests, in the prepare cache index and in results.json
MERGE_KEYS = ["dataset", "subject", "clip"]


def load_samples(protocol, manifest=None) -> tuple[Any, pd.DataFrame]:
    """(protocol object, its samples) for a protocol name or object and an optional manifest.

    `manifest` (a CSV path or a DataFrame) replaces the protocol's shipped manifest, e.g.
    to run a protocol on a synthetic dataset.
    """
    if isinstance(protocol, (str, Path)):
        protocol = load_protocol(protocol, check_manifest=manifest is None)
    if isinstance(manifest, (list, tuple)):
        paths = [Path(m) for m in manifest]
        for m in paths:
            if not m.is_file():
                raise MicroferError(f"{m}: manifest CSV not found")
        if len(paths) == 1:
            manifest = paths[0]
        else:  # several datasets prepared separately, evaluated together (e.g. the composite)
            manifest = pd.concat([read_manifest(m) for m in paths], ignore_index=True)
    elif manifest is not None and not isinstance(manifest, pd.DataFrame):
        manifest = Path(manifest)
        if not manifest.is_file():
            raise MicroferError(f"{manifest}: manifest CSV not found")
    samples = protocol.samples(manifest)
    missing = [c for c in (*MERGE_KEYS, "y", "group") if c not in samples.columns]
    if missing:
        raise MicroferError(f"protocol {protocol.name}: samples lack column(s) {missing}")
    if samples.empty:
        raise MicroferError(
            f"protocol {protocol.name}: no sample of the manifest maps to one of its classes "
            f"{list(protocol.classes)}"
        )
    return protocol, samples.reset_index(drop=True)


def match_cache(samples: pd.DataFrame, index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept samples with their cache `key`, excluded samples with a `reason`)."""
    index = index.copy()
    for c in MERGE_KEYS:
        index[c] = index[c].astype(str)
    left = samples.copy()
    for c in MERGE_KEYS:
        left[c] = left[c].astype(str)
    ok = index[index["status"].astype(str) == "ok"].drop_duplicates(MERGE_KEYS, keep="last")
    failed = index[index["status"].astype(str) != "ok"].drop_duplicates(MERGE_KEYS, keep="last")
    cached = [c for c in ("onset", "apex", "offset", "apex_source") if c in ok.columns]
    merged = left.drop(columns=[c for c in ("key",) if c in left.columns]).merge(
        ok[MERGE_KEYS + ["key"] + cached].rename(columns={c: f"cached_{c}" for c in cached}),
        on=MERGE_KEYS,
        how="left",
    )
    check_cache_agrees(merged)
    merged = merged.drop(columns=[f"cached_{c}" for c in cached])
    has = merged["key"].notna()
    kept = merged[has].reset_index(drop=True)
    excluded = merged[~has][MERGE_KEYS + ["group"]].merge(
        failed[MERGE_KEYS + [c for c in ("reason",) if c in failed.columns]],
        on=MERGE_KEYS,
        how="left",
    )
    if "reason" not in excluded.columns:
        excluded["reason"] = ""
    excluded["reason"] = excluded["reason"].fillna("").astype(str)
    excluded.loc[excluded["reason"] == "", "reason"] = "not in the cache (not prepared)"
    return kept, excluded.reset_index(drop=True)


def check_cache_agrees(merged: pd.DataFrame) -> None:
    """MicroferError when cache entries were prepared from other frames than the manifest names
    (a corrected coding file, a manifest of another version): the numbers would be silently
    those of the old frames. Entries read from derived inputs, and old caches that did not
    record onset/offset, are not compared."""
    if "cached_onset" not in merged.columns or "onset" not in merged.columns:
        return
    framed = merged["cached_apex_source"].astype(str).isin(["annotated", "spotted"])
    rows = merged[framed & merged["cached_onset"].astype(str).str.fullmatch(r"-?\d+")]
    bad = []
    for r in rows.to_dict("records"):
        diffs = [
            f"{c} {r[c]} in the manifest, {r[f'cached_{c}']} in the cache"
            for c in ("onset", "offset")
            if str(r[c]) not in ("", "nan") and int(float(r[c])) != int(float(r[f"cached_{c}"]))
        ]
        annotated = r["cached_apex_source"] == "annotated" and str(r["apex"]) not in ("", "nan")
        if annotated and int(float(r["apex"])) != int(float(r["cached_apex"])):
            diffs.append(f"apex {r['apex']} in the manifest, {r['cached_apex']} in the cache")
        if diffs:
            bad.append(f"{r['key']} ({'; '.join(diffs)})")
    if bad:
        raise MicroferError(
            f"the prepare cache disagrees with the manifest for {len(bad)} clip(s): "
            f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; run `microfer prepare` with "
            "this manifest on the same cache to prepare them again"
        )
