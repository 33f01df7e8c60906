"""Spotting outputs: results.json, report.md and signal plots (true and spotted intervals)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from microfer.io import atomic_path, package_versions, write_json, write_text
from microfer.learn.report import markdown_table

COLOURS = {"micro": "tab:red", "macro": "tab:blue"}
METHOD_NAMES = {
    "scored": "rules, or a peak scorer where it won on the training subjects (in-fold)",
    "spot": "microfer spot: the rules (training-free, thresholds chosen in-fold)",
    "threshold_baseline": "every frame above a fixed threshold (in-fold)",
    "spaced_baseline": "evenly spaced guesses (training rate and length)",
}


def plot_signal(
    numbers: np.ndarray,
    curve: np.ndarray,
    path: Path,
    title: str,
    spotted: Sequence = (),
    truth=None,
    lost: Sequence = (),
    threshold: float | None = None,
) -> None:
    """The spotting curve over the video; true intervals as shaded bands (below), spotted ones
    as bars (above), frames without a face greyed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3.2))
    ax.plot(numbers, curve, lw=0.7, color="black", label="motion (noise units)")
    top = float(np.nanmax(curve)) if np.isfinite(curve).any() else 1.0
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls="--", lw=0.7, label=f"threshold {threshold:g}")
    if truth is not None:
        for r in truth.itertuples():
            ax.axvspan(r.onset, r.offset, color=COLOURS.get(r.type, "grey"), alpha=0.18, lw=0)
    for iv in spotted:
        d = iv if isinstance(iv, dict) else iv.to_dict()
        kind, on, off = d["type"], d["onset"], d["offset"]
        ax.plot(
            [on, off],
            [top * 1.06] * 2,
            color=COLOURS.get(kind, "grey"),
            lw=3,
            solid_capstyle="butt",
        )
    for a, b in lost:
        ax.axvspan(a, b, color="0.6", alpha=0.5, lw=0, hatch="//")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[k], alpha=0.3) for k in COLOURS]
    labels = [f"{k} (true: band, spotted: bar)" for k in COLOURS]
    if lost:
        handles.append(plt.Rectangle((0, 0), 1, 1, color="0.6", alpha=0.5))
        labels.append("no face")
    ax.legend(
        handles + ax.get_legend_handles_labels()[0],
        labels + ax.get_legend_handles_labels()[1],
        loc="upper left",
        fontsize=7,
        ncol=4,
    )
    ax.set_xlabel("frame")
    ax.set_ylim(min(0.0, float(np.nanmin(curve)) if np.isfinite(curve).any() else 0.0), top * 1.25)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _header(doc: dict) -> list[str]:
    return [
        f"# Spotting: {doc['protocol']}",
        "",
        doc["description"],
        "",
        f"- root: `{doc['root']}`; coding file: `{doc['coding']}`",
        f"- {doc['n_subjects']} subjects, {doc['n_videos']} videos, {doc['n_frames']} frames; "
        f"ground truth: {doc['n_intervals']['micro']} micro, {doc['n_intervals']['macro']} macro intervals",
        f"- a spotted interval is a true positive when IoU >= {doc['iou_min']} with a true interval of its "
        "type; counts pooled over all videos; leave-one-subject-out, every threshold chosen on the "
        "training subjects of its fold only",
        "",
    ]


def _methods_table(metrics: dict) -> str:
    rows = []
    for method, scores in metrics.items():
        rows.append(
            [METHOD_NAMES.get(method, method)]
            + [
                f"{scores[k]['f1']:.3f} (P {scores[k]['precision']:.2f} R {scores[k]['recall']:.2f}; "
                f"TP {scores[k]['tp']} FP {scores[k]['fp']} FN {scores[k]['fn']})"
                for k in ("overall", "micro", "macro")
            ]
        )
    return markdown_table(["method", "overall F1", "micro F1", "macro F1"], rows)


FOLD_COLUMNS = [
    "test subject",
    "threshold",
    "micro threshold",
    "blink ratio",
    "low",
    "merge",
    "talk peaks",
    "train F1",
    "scorer cut (out-of-fold F1)",
    "baseline threshold",
]


def _folds_table(folds: list[dict]) -> str:
    return markdown_table(
        FOLD_COLUMNS,
        [
            [
                f["test_subject"],
                f["chosen"]["threshold"],
                f["chosen"].get("micro_threshold") or "same",
                f["chosen"]["blink_ratio"],
                f["chosen"]["low"],
                f["chosen"]["merge"],
                f["chosen"]["talk_peaks"],
                _fmt(f["train_f1"]),
                "-"
                if not f.get("scorer")
                else f"{f['scorer']['cut']:g} ({f['scorer']['oof_f1']:.3f}"
                + (", used)" if f["scorer"].get("used") else ")"),
                f["threshold_baseline"]["threshold"],
            ]
            for f in folds
        ],
    )


def spot_markdown(doc: dict) -> str:
    lines = _header(doc) + [_methods_table(doc["metrics"]), ""]
    if "strs" in doc:
        lines += [
            f"STRS (spot-then-recognise): {doc['strs']['strs']:.3f} = spotting F1 "
            f"{doc['strs']['spot_f1']:.3f} x recognition UF1 {doc['strs']['uf1']:.3f} on "
            f"{doc['strs']['n']} true-positive micro intervals",
            "",
        ]
    lines += ["## Per fold (chosen on the training subjects)", "", _folds_table(doc["folds"]), ""]
    if doc.get("failures"):
        lines += ["## Videos that could not be read", ""] + [
            f"- {f['video']}: {f['reason']}" for f in doc["failures"]
        ]
        lines.append("")
    if doc.get("plots"):
        lines += ["## Signal plots", ""] + [f"![{p}]({p})" for p in doc["plots"]] + [""]
    return "\n".join(lines)


def write_spot_report(doc: dict, videos, out: Path, plots: int = 4) -> dict[str, Path]:
    out = Path(out)
    names = []
    by_video = {s["video"]: s for s in doc["spotted"]}
    chosen = {f["test_subject"]: f["chosen"]["threshold"] for f in doc["folds"]}
    for v in list(videos)[:plots]:
        name = f"signal_{v.video.replace('/', '_')}.png"
        plot_signal(
            v.signal.numbers,
            v.curves[0],
            out / name,
            f"{v.video} (subject {v.subject})",
            spotted=by_video.get(v.video, {}).get("intervals", []),
            truth=v.truth,
            lost=v.signal.lost_ranges(),
            threshold=chosen.get(v.subject),
        )
        names.append(name)
    doc["plots"] = names
    doc["versions"] = package_versions()
    paths = {"results": out / "results.json", "report": out / "report.md"}
    write_json(paths["results"], doc)
    write_text(paths["report"], spot_markdown(doc))
    return paths
