"""Spotting over many generated sets, with development and held-out seeds kept apart
(`microfer spot-seeds`).

One synthetic set (one seed) says little: the spotter's regions, scales and rules were chosen
while looking at single seeds, and F1 on a fresh seed can be far lower. This runs
`spot-eval` on a fresh set of synthetic long videos per seed and reports, per metric, the
mean, the sample sd and the range over the seeds, separately for

- DEVELOPMENT seeds: the sets on which design choices may be made (look at these), and
- HELD-OUT seeds: never looked at while designing; their row is the honest number.

The split is fixed before a run (`DEV_SEEDS`, `HELD_OUT_SEEDS`, or given) and must be
disjoint. Each row is aggregated only from the records of its own role, and the record of a
seed carries its role, so a development number cannot reach the held-out row (tests check
this). Folders: OUT/<layout>/seed-<N>/data (the generated set; reused when a complete one
with the same parameters is there) and OUT/<layout>/seed-<N>/eval (the spot-eval run; its
signal cache makes a rerun cheap); OUT/spot_seeds.json, spot_seeds.md and spot_seeds.png.

With background videos each set is made of the user's REAL face videos with known intervals
injected (`synth --background-video`, `microfer.synth.inject`) instead of rendered faces:
the same seeds then draw where the intervals go, the background's own motion stays. Beside
the F1s every row reports false positives per minute of video (over all of a set's videos).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable, Optional, Sequence

from microfer.errors import MicroferError
from microfer.io import atomic_path, write_json, write_text
from microfer.spotting.spot_eval import HEADLINE, run_spot_eval
from microfer.synth.inject import generate_injected
from microfer.synth.long_plans import SPECS
from microfer.synth.long_videos import generate_long
from microfer.synth.output import MARKER

DEV_SEEDS = (1, 2)
HELD_OUT_SEEDS = (101, 102, 103)
ROLES = ("dev", "held_out")
ROLE_NAMES = {"dev": "development", "held_out": "held-out"}
PROTOCOLS = {"casme_sq": "casme_sq-spotting", "samm_lv": "samm-lv-spotting"}
# intervals per video: what the documented single-seed commands use
INTERVALS = {"casme_sq": 6, "samm_lv": 4}
# "scored": spot-eval's HEADLINE (rules, or the peak scorer trained in-fold); "spot": the
# rules alone (runs made before the scorer have only these, and are read as they are)
METHODS = ("scored", "spot", "threshold_baseline", "spaced_baseline")
TYPES = ("overall", "micro", "macro")
METRICS = tuple(f"{m}/{t}_f1" for m in METHODS for t in TYPES)
FP_METRICS = tuple(f"{m}/fp_per_min" for m in METHODS)


def check_split(dev: Sequence[int], held_out: Sequence[int]) -> None:
    """A usable split: some held-out seeds, no seed twice, none in both roles."""
    if not held_out:
        raise MicroferError("give at least one held-out seed")
    for name, seeds in (("development", dev), ("held-out", held_out)):
        if len(set(seeds)) != len(seeds):
            raise MicroferError(f"a {name} seed is given twice: {list(seeds)}")
    both = sorted(set(dev) & set(held_out))
    if both:
        raise MicroferError(f"seeds {both} are both development and held-out seeds")


def seed_scores(doc: dict, fps: Optional[float] = None) -> dict[str, float]:
    """The metrics of one spot-eval result, flat: 'spot/micro_f1' -> value; with the videos'
    `fps`, also 'spot/fp_per_min': false positives (all types) per minute of video."""
    out = {
        f"{m}/{t}_f1": float(doc["metrics"][m][t]["f1"])
        for m in METHODS
        for t in TYPES
        if m in doc["metrics"]
    }
    minutes = doc["n_frames"] / fps / 60 if fps and doc.get("n_frames") else None
    for m in METHODS:
        fp = doc["metrics"].get(m, {}).get("overall", {}).get("fp")
        if minutes and fp is not None:
            out[f"{m}/fp_per_min"] = fp / minutes
    return out


def aggregate(records: Sequence[dict], role: str) -> dict:
    """Mean, sample sd (n - 1; None for one seed), min and max per metric over the records of
    `role` only; a record of the other role is refused rather than skipped, so a caller that
    mixes them finds out."""
    wrong = [r["seed"] for r in records if r["role"] != role]
    if wrong:
        raise MicroferError(f"seeds {wrong} are not {ROLE_NAMES[role]} seeds")
    out = {"seeds": [r["seed"] for r in records], "n": len(records), "metrics": {}}
    for metric in METRICS + FP_METRICS:
        values = [r["scores"][metric] for r in records if metric in r["scores"]]
        if not values:
            continue
        out["metrics"][metric] = {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values),
            "max": max(values),
            "values": values,
        }
    return out


def _complete_set(
    data: Path,
    layout: str,
    seed: int,
    subjects: int,
    intervals: int,
    backgrounds: Sequence[Path] = (),
    seconds: Optional[float] = None,
) -> bool:
    """A finished synth output with these parameters is already there (reuse: rendering is
    the slow part)."""
    try:
        marker = json.loads((data / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    want = {"layout": layout, "seed": seed, "subjects": subjects, "intervals": intervals}
    if backgrounds:
        want["seconds"] = seconds
    given = [str(Path(b)) for b in backgrounds]
    used = [b["path"] for b in marker.get("background_videos", [])]
    return (
        bool(marker.get("complete"))
        and all(marker.get(k) == v for k, v in want.items())
        and sorted(set(given)) == sorted(used)
    )


def run_seed(
    layout: str,
    seed: int,
    subjects: int,
    out: Path,
    progress: bool = False,
    frame_size: Optional[tuple[int, int]] = None,
    intervals: Optional[int] = None,
    backgrounds: Sequence[Path] = (),
    seconds: Optional[float] = None,
) -> dict:
    """Generate (or reuse) the set of one seed and run spot-eval on it; the spot-eval result.
    `frame_size` and `intervals` (per video) shrink the set for tests; `backgrounds` (real
    face videos, `seconds` long each) replace the rendered faces."""
    data, run = Path(out) / "data", Path(out) / "eval"
    intervals = intervals or INTERVALS[layout]
    if backgrounds:
        if not _complete_set(data, layout, seed, subjects, intervals, backgrounds, seconds):
            generate_injected(
                layout,
                data,
                list(backgrounds),
                subjects=subjects,
                intervals=intervals,
                seed=seed,
                seconds=seconds,
                progress=progress,
                force=True,
            )
    elif not _complete_set(data, layout, seed, subjects, intervals):
        generate_long(
            layout,
            data,
            subjects=subjects,
            intervals=intervals,
            seed=seed,
            progress=progress,
            force=True,
            frame_size=frame_size,
        )
    return run_spot_eval(PROTOCOLS[layout], data, run, progress=progress, plots=2)


def read_seed_run(
    layout: str, seed: int, subjects: int, out: Path, progress: bool = False, **_generation
) -> dict:
    """The spot-eval result already in `out`/eval (`--from-runs`: aggregate finished runs
    again without repeating them; the LOSO choice is the slow part); refused when it is
    missing or is not of this layout and number of subjects."""
    path = Path(out) / "eval" / "results.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MicroferError(f"{path}: no finished spot-eval run of seed {seed} ({exc})") from None
    if doc.get("protocol") != PROTOCOLS[layout] or doc.get("n_subjects") != subjects:
        raise MicroferError(
            f"{path}: a {doc.get('protocol')} run with {doc.get('n_subjects')} subjects, "
            f"not {PROTOCOLS[layout]} with {subjects}"
        )
    return doc


def headline(metrics: dict) -> str:
    """The method a seed's own row reports (`metrics`: a run's metrics, or its flat scores):
    spot-eval's headline, or the rules in runs made before it existed."""
    return HEADLINE if any(k.split("/")[0] == HEADLINE for k in metrics) else "spot"


def _record(doc: dict, layout: str, seed: int, role: str) -> dict:
    spot = doc["metrics"][headline(doc["metrics"])]["overall"]
    return {
        "layout": layout,
        "seed": seed,
        "role": role,
        "n_subjects": doc["n_subjects"],
        "n_videos": doc["n_videos"],
        "n_frames": doc["n_frames"],
        "n_intervals": doc["n_intervals"],
        "failures": len(doc["failures"]),
        "spot_precision": spot.get("precision"),
        "spot_recall": spot.get("recall"),
        "scores": seed_scores(doc, SPECS[layout].fps),
    }


def run_spot_seeds(
    layouts: Sequence[str],
    out: Path,
    dev: Sequence[int] = DEV_SEEDS,
    held_out: Sequence[int] = HELD_OUT_SEEDS,
    subjects: int = 10,
    progress: bool = True,
    run_one: Callable[..., dict] = run_seed,
    backgrounds: Sequence[Path] = (),
    seconds: Optional[float] = None,
) -> dict:
    """spot-eval on one fresh set per (layout, seed); per layout a development row from the
    `dev` seeds and a held-out row from the `held_out` seeds. `run_one(layout, seed, subjects,
    folder, progress=...)` -> a spot-eval result (tests pass a stand-in); with `backgrounds`
    it is also given backgrounds= and seconds=. Writes OUT/spot_seeds.*."""
    from tqdm import tqdm

    check_split(list(dev), list(held_out))
    unknown = [la for la in layouts if la not in PROTOCOLS]
    if unknown:
        raise MicroferError(f"unknown layouts {unknown}; expected {', '.join(PROTOCOLS)}")
    out = Path(out)
    jobs = [
        (la, s, role)
        for la in layouts
        for role, seeds in (("dev", dev), ("held_out", held_out))
        for s in seeds
    ]
    records = []
    for la, s, role in tqdm(jobs, desc="seeds", unit="set", disable=not progress or None):
        extra = {"backgrounds": list(backgrounds), "seconds": seconds} if backgrounds else {}
        doc = run_one(la, s, subjects, out / la / f"seed-{s}", progress=progress, **extra)
        records.append(_record(doc, la, s, role))
    doc = {
        "split": {"dev": list(dev), "held_out": list(held_out)},
        "subjects": subjects,
        "intervals_per_video": {la: INTERVALS[la] for la in layouts},
        "background_videos": [str(b) for b in backgrounds],
        "seconds": seconds,
        "records": records,
        "summary": {
            la: {
                role: aggregate(
                    [r for r in records if r["layout"] == la and r["role"] == role], role
                )
                for role in ROLES
            }
            for la in layouts
        },
    }
    write_seed_report(doc, out)
    return doc


def _cell(m: Optional[dict]) -> str:
    if m is None:
        return "-"
    sd = "" if m["sd"] is None else f" ± {m['sd']:.3f}"
    return f"{m['mean']:.3f}{sd} ({m['min']:.3f}-{m['max']:.3f})"


def format_table(doc: dict) -> str:
    """Markdown: one row per layout x role x method; F1 as mean ± sd (min-max) over the seeds."""
    lines = [
        "| layout | seeds | method | overall F1 | micro F1 | macro F1 | FP / min |",
        "|---|---|---|---|---|---|---|",
    ]
    for la, rows in doc["summary"].items():
        for role in ROLES:
            agg = rows[role]
            if not agg["n"]:
                continue
            seeds = f"{ROLE_NAMES[role]} {', '.join(map(str, agg['seeds']))}"
            for m in METHODS:
                cells = [_cell(agg["metrics"].get(f"{m}/{t}_f1")) for t in TYPES]
                cells.append(_cell(agg["metrics"].get(f"{m}/fp_per_min")))
                lines.append(f"| {la} | {seeds} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_seed_rows(doc: dict) -> str:
    """Markdown: every seed's own numbers, so each aggregate can be checked by hand."""
    lines = [
        "| layout | seed | role | subjects | videos | frames | micro / macro intervals "
        "| method | overall F1 | micro F1 | macro F1 | FP / min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["records"]:
        s = r["scores"]
        m = headline(s)
        fp = s.get(f"{m}/fp_per_min")
        lines.append(
            f"| {r['layout']} | {r['seed']} | {ROLE_NAMES[r['role']]} | {r['n_subjects']} "
            f"| {r['n_videos']} | {r['n_frames']} "
            f"| {r['n_intervals']['micro']} / {r['n_intervals']['macro']} "
            f"| {m} | {s[f'{m}/overall_f1']:.3f} | {s[f'{m}/micro_f1']:.3f} "
            f"| {s[f'{m}/macro_f1']:.3f} "
            f"| {'-' if fp is None else f'{fp:.2f}'} |"
        )
    return "\n".join(lines)


def write_seed_report(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "spot_seeds.json", doc)
    split = doc["split"]
    text = [
        "# Spotting over several seeds",
        "",
        f"Development seeds {split['dev']} (design choices may be made on these); held-out "
        f"seeds {split['held_out']} (never tuned on). {doc['subjects']} subjects per set, "
        "LOSO, thresholds chosen in-fold. F1 as mean ± sample sd (min-max) over the seeds.",
        "",
        *(
            [
                f"Sets made of REAL background videos {doc['background_videos']} with known "
                f"intervals injected ({doc['seconds'] or 'own length'} s a video, played forward "
                "then backward where the background is shorter); every subject of a set is one "
                "of these backgrounds.",
                "",
            ]
            if doc.get("background_videos")
            else []
        ),
        format_table(doc),
        "",
        "Per seed (the headline method):",
        "",
        format_seed_rows(doc),
        "",
    ]
    write_text(out / "spot_seeds.md", "\n".join(text))
    plot_seeds(doc, out / "spot_seeds.png")


def plot_seeds(doc: dict, path: Path) -> None:
    """Each seed's headline F1 per type, development and held-out side by side, per layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layouts = list(doc["summary"])
    fig, axes = plt.subplots(1, len(layouts), figsize=(4.5 * len(layouts), 3.2), squeeze=False)
    colours = {"dev": "tab:grey", "held_out": "tab:red"}
    for ax, la in zip(axes[0], layouts):
        for i, t in enumerate(TYPES):
            for j, role in enumerate(ROLES):
                vals = [
                    r["scores"][f"{headline(r['scores'])}/{t}_f1"]
                    for r in doc["records"]
                    if r["layout"] == la and r["role"] == role
                ]
                x = i + (j - 0.5) * 0.3
                ax.scatter([x] * len(vals), vals, color=colours[role], s=18)
                if vals:
                    ax.hlines(statistics.fmean(vals), x - 0.1, x + 0.1, color=colours[role])
        ax.set_xticks(range(len(TYPES)), [f"{t} F1" for t in TYPES])
        ax.set_ylim(0, 1)
        ax.set_title(f"{la}: grey development, red held-out", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
