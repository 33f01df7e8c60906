"""The whole job on an embedded default: no licensed data needed.

synthesise a small MEGC2019-style composite (shipped public-domain faces, CASME II /
SAMM / SMIC layouts with their real coding-file formats) -> read it through the dataset
adapters -> prepare -> LOSO on the composite protocol -> train a bundle -> predict
held-out synthetic videos (unseen identity variants) with and without onset/apex.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from microfer.clip.prepare import PrepareSettings, prepare_dataset
from microfer.datasets import get
from microfer.errors import MicroferError
from microfer.io import write_csv, write_text
from microfer.learn.evaluate import LosoSettings, run_loso
from microfer.learn.report import write_report
from microfer.learn.train import train_bundle
from microfer.recognise.predict import Predictor
from microfer.synth import generate, generate_composite

PROTOCOL = "megc2019-composite"
# (dataset adapter, synth folder) of the composite
PARTS = (("casme2", "casme2"), ("samm", "samm"), ("smic_hs", "smic"))


@dataclass
class DemoResult:
    out: Path
    loso_metrics: dict
    report_dir: Path
    bundle: Path
    predictions: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


MARKER = ".microfer-demo"  # says a folder holds a demo's output, which a rerun may replace


def _claim(out: Path, force: bool) -> None:
    """Refuse a non-empty folder that no demo wrote (a user's manifest.csv or loso/report.md
    were once overwritten), unless forced; then mark the folder as the demo's."""
    if out.exists() and not out.is_dir():
        raise MicroferError(f"{out}: a file stands where the demo's output folder goes")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not force:
        raise MicroferError(
            f"{out}: the folder is not empty and no demo wrote it; choose another --out, or "
            "pass --force to write the demo's files into it (files of the same names are replaced)"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text(
        out / MARKER, "written by `microfer demo`; a rerun may replace this folder's files\n"
    )


def _say(echo, text: str) -> None:
    if echo is not None:
        echo(text)


def _synthesise(out: Path, quick: bool, seed: int, faces, echo, progress: bool) -> dict:
    subjects, clips = (2, 3) if quick else (4, 6)
    _say(
        echo,
        f"[1/6] synthesising a composite: {subjects} subjects x {clips} clips in each of CASME II, SAMM, SMIC",
    )
    return generate_composite(
        out / "data",
        subjects_per_dataset=subjects,
        clips_per_subject=clips,
        seed=seed,
        faces=faces,
        progress=progress,
        clip_frames=(18, 26) if quick else None,
    )


def _prepare(out: Path, sets: dict, echo, progress: bool) -> Path:
    """Read and prepare every part of the composite; writes out/manifest.csv, returns the cache."""
    _say(
        echo, "[2/6] reading the coding files and preparing clips (align, onset/apex, optical flow)"
    )
    settings = PrepareSettings()
    manifests = []
    for dataset, folder in PARTS:
        s = sets[folder]
        df = get(dataset).read(s.coding_file, root=s.root)
        summary = prepare_dataset(df, s.root, out / "cache", settings, workers=1, progress=progress)
        _say(
            echo,
            f"      {dataset}: {summary.prepared + summary.skipped} prepared, {len(summary.failed)} failed",
        )
        manifests.append(df)
    write_csv(out / "manifest.csv", pd.concat(manifests, ignore_index=True))
    return out / "cache" / settings.key()


def _held_out_videos(out: Path, seed: int, faces, echo):
    _say(echo, "[5/6] synthesising held-out videos (identity variants never seen in training)")
    return generate(
        "video",
        out / "heldout",
        subjects=1,
        clips_per_subject=3,
        seed=seed + 1000,
        faces=faces,
        emotions=["happiness", "surprise", "disgust"],
        identity_offset=97,
        progress=False,
    )


def _predict_held_out(held, bundle: Path, echo) -> list[dict]:
    truth = pd.read_csv(held.truth_file, dtype=str, keep_default_na=False)
    predictor = Predictor(bundle)
    predictions = []
    _say(
        echo,
        "[6/6] predicting each held-out video, first spotting onset/apex/offset, then with the true frames",
    )
    for row in truth.to_dict("records"):
        video = (
            held.root / row["frame_dir"]
            if row.get("frame_dir")
            else next((held.root / "clips").glob(f"{row['clip']}.*"))
        )
        spotted = predictor.predict(video)
        given = predictor.predict(
            video, onset=int(row["onset"]), apex=int(row["apex"]), offset=int(row["offset"])
        )
        predictions.append(
            {
                "video": str(video),
                "truth": row["class3"],
                "predicted_spotted": spotted.label,
                "predicted_given": given.label,
                "apex_true": int(row["apex"]),
                "apex_spotted": spotted.apex,
                "ms": round(sum(spotted.timings_ms.values()), 1),
            }
        )
    return predictions


def run_demo(
    out,
    quick: bool = False,
    seed: int = 0,
    faces: Optional[Path] = None,
    echo=print,
    progress: bool = True,
    force: bool = False,
) -> DemoResult:
    out = Path(out)
    _claim(out, force)
    times: dict[str, float] = {}
    t = time.perf_counter()
    sets = _synthesise(out, quick, seed, faces, echo, progress)
    times["synth_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cache = _prepare(out, sets, echo, progress)
    times["prepare_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(echo, f"[3/6] leave-one-subject-out on {PROTOCOL} (grid search inside each training fold)")
    loso_settings = LosoSettings(seed=seed, n_jobs=1 if quick else 2)
    result = run_loso(
        PROTOCOL, cache, manifest=out / "manifest.csv", settings=loso_settings, progress=progress
    )
    report_dir = out / "loso"
    write_report(result, report_dir)
    times["loso_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(echo, "[4/6] training a bundle on all subjects")
    trained = train_bundle(
        PROTOCOL,
        cache,
        out / "bundle",
        manifest=out / "manifest.csv",
        settings=loso_settings,
        progress=False,
    )
    times["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    held = _held_out_videos(out, seed, faces, echo)
    predictions = _predict_held_out(held, trained.bundle, echo)
    times["predict_s"] = time.perf_counter() - t
    return DemoResult(
        out=out,
        loso_metrics=result.metrics,
        report_dir=report_dir,
        bundle=trained.bundle,
        predictions=predictions,
        seconds={k: round(v, 1) for k, v in times.items()},
    )
