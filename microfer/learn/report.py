"""A LOSO result -> an output folder: results.json, report.md, confusion.png, per_subject.png
(+ reliability.png when the folds gave calibrated probabilities, permutation_null.png when
the run had a permutation test).

Everything in results.json except the "timings" block is a deterministic function of the
inputs and settings: the same command twice gives the same numbers (and the same file
apart from timings). All files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from microfer.io import atomic_path, package_versions, write_json, write_text  # noqa: F401  (package_versions: importable from here too)


def results_document(result) -> dict[str, Any]:
    """The JSON-ready content of results.json."""
    samples = result.samples
    classes = result.classes
    folds = []
    for r in result.folds:
        preds = []
        probs = r.probabilities or [None] * len(r.test_idx)
        for i, p, prob in zip(r.test_idx, r.y_pred, probs):
            row = samples.iloc[i]
            preds.append(
                {
                    "key": str(row["key"]),
                    "dataset": str(row["dataset"]),
                    "subject": str(row["subject"]),
                    "clip": str(row["clip"]),
                    "true": classes[int(result.y[i])],
                    "pred": classes[int(p)],
                    **({} if prob is None else {"probabilities": dict(zip(classes, prob))}),
                }
            )
        folds.append(
            {
                "group": r.group,
                "n_train": r.n_train,
                "n_test": len(r.test_idx),
                "feature_set": r.feature_name,
                "params": r.params,
                "inner_score": r.inner_score,
                "majority": classes[r.majority],
                "n_calibration": r.n_calibration,
                "predictions": preds,
            }
        )
    return {
        "protocol": result.protocol,
        "classes": classes,
        "manifest_sha256": result.manifest_sha256,
        "samples_sha256": result.samples_sha256,
        "n_samples": int(len(samples)),
        "settings": result.settings,
        "seed": result.settings.get("seed"),
        "feature_sets": result.feature_sets,
        "versions": package_versions(),
        "metrics": result.metrics,
        "excluded": result.excluded[["dataset", "subject", "clip", "reason"]]
        .astype(str)
        .to_dict(orient="records"),
        "folds": folds,
        "timings": result.timings,
    }


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(doc: dict[str, Any]) -> str:
    m = doc["metrics"]
    parts = _introduction(doc)
    parts += _pooled_section(m)
    if m.get("permutation"):
        parts += _chance_section(m["permutation"])
    if len(m.get("per_dataset", {})) > 1:
        parts += _per_dataset_section(m["per_dataset"])
    parts += _per_class_section(m["pooled"], doc["classes"])
    if m.get("calibration"):
        parts += _calibration_section(m["calibration"])
    parts += _choices_section(doc["folds"])
    parts += _per_subject_section(m["per_subject"])
    if doc["excluded"]:
        parts += ["", "## Excluded samples", ""]
        parts.append(
            markdown_table(
                ["reason", "count"], [[k, v] for k, v in m["excluded"]["by_reason"].items()]
            )
        )
    parts += ["", "## Versions", ""]
    parts.append(", ".join(f"{k} {v}" for k, v in doc["versions"].items()))
    return "\n".join(parts) + "\n"


def _introduction(doc: dict[str, Any]) -> list[str]:
    m = doc["metrics"]
    return [
        f"# LOSO report: {doc['protocol']}",
        "",
        f"{doc['n_samples']} samples evaluated in {m['n_folds']} folds (one per subject); "
        f"{m['excluded']['count']} of {m['excluded']['of']} protocol samples excluded "
        f"(not in the cache or failed to prepare).",
        f"Grid `{doc['settings']['grid']}`, seed {doc['seed']}, inner CV on training subjects only "
        f"({doc['settings']['inner_splits']} splits, scored by {doc['settings']['scoring']}).",
        "Metrics are computed on the confusion matrix pooled over all folds (MEGC style). "
        "UF1 skips classes absent from both truth and predictions; UAR averages recall over "
        "classes present in the truth. The majority baseline predicts each fold's most "
        "frequent training class.",
    ]


def _pooled_section(m: dict[str, Any]) -> list[str]:
    """The pooled scores beside the baselines, then the subject halves and the interval."""
    parts = ["", "## Pooled", ""]
    rows = [
        [label, _fmt(s["uf1"]), _fmt(s["uar"]), _fmt(s["accuracy"]), s["n"]]
        for label, s in (("model", m["pooled"]), ("majority baseline", m["majority"]))
    ]
    perm = m.get("permutation")
    if perm:
        pm = perm["metrics"]
        rows.append(
            [
                f"permutation null (N={perm['n_permutations']}), mean",
                _fmt(pm["uf1"]["null_mean"]),
                _fmt(pm["uar"]["null_mean"]),
                "n/a",
                m["pooled"]["n"],
            ]
        )
    parts.append(markdown_table(["", "UF1", "UAR", "accuracy", "n"], rows))
    halves = m.get("halves")
    if halves:
        parts += [
            "",
            f"Subject halves ({halves['rule']}): "
            + "; ".join(
                f"{h} ({len(halves[h]['subjects'])} subjects) UF1 {_fmt(halves[h]['uf1'])}, "
                f"UAR {_fmt(halves[h]['uar'])}"
                for h in ("A", "B")
            )
            + ".",
        ]
    boot = m.get("bootstrap")
    if boot:
        parts += [
            "",
            f"{int(boot['level'] * 100)}% interval, bootstrap over subjects ({boot['n_boot']} "
            f"resamples of the subjects with replacement, seed {boot['seed']}): "
            f"UF1 {_fmt(boot['uf1'][0])}-{_fmt(boot['uf1'][1])}, "
            f"UAR {_fmt(boot['uar'][0])}-{_fmt(boot['uar'][1])}.",
        ]
    return parts


def _chance_section(perm: dict[str, Any]) -> list[str]:
    within = (
        f"within each dataset ({', '.join(perm['strata'])})"
        if perm["strata"]
        else "across all samples"
    )
    parts = ["", "## Chance level (permutation test)", ""]
    parts.append(
        f"The whole nested procedure (every fold's inner choice of feature set and SVM settings) "
        f"rerun {perm['n_permutations']} times with the labels permuted {within}, folds unchanged "
        f"(seed {perm['seed']}). With class weighting and LOSO an uninformed classifier scores above "
        f"the majority baseline; this null is the chance level to beat. "
        f"p = (1 + #null >= model) / (N + 1); its minimum here is {1 / (perm['n_permutations'] + 1):.4f}. "
        f"Histograms: permutation_null.png."
    )
    parts += [""]
    parts.append(
        markdown_table(
            ["metric", "model", "null mean", "null 95th percentile", "p-value"],
            [
                [
                    k.upper(),
                    _fmt(v["real"]),
                    _fmt(v["null_mean"]),
                    _fmt(v["null_p95"]),
                    _fmt(v["p_value"]),
                ]
                for k, v in perm["metrics"].items()
            ],
        )
    )
    return parts


def _per_dataset_section(per_dataset: dict[str, Any]) -> list[str]:
    rows = [
        [
            ds,
            _fmt(v["model"]["uf1"]),
            _fmt(v["model"]["uar"]),
            _fmt(v["model"]["accuracy"]),
            _fmt(v["majority"]["uf1"]),
            v["model"]["n"],
        ]
        for ds, v in per_dataset.items()
    ]
    return [
        "",
        "## Per dataset",
        "",
        markdown_table(["dataset", "UF1", "UAR", "accuracy", "majority UF1", "n"], rows),
    ]


def _per_class_section(pooled: dict[str, Any], classes: list[str]) -> list[str]:
    """Scores per class, then the pooled confusion matrix."""
    pc = pooled["per_class"]
    rows = [
        [
            c,
            _fmt(pc[c]["f1"]),
            _fmt(pc[c]["recall"]),
            _fmt(pc[c]["precision"]),
            pc[c]["support"],
            pc[c]["predicted"],
        ]
        for c in classes
    ]
    cm = pooled["confusion"]
    return [
        "",
        "## Per class",
        "",
        markdown_table(["class", "F1", "recall", "precision", "support", "predicted"], rows),
        "",
        "## Confusion (rows = truth, columns = prediction)",
        "",
        markdown_table([""] + classes, [[c] + cm[i] for i, c in enumerate(classes)]),
    ]


def _calibration_section(cal: dict[str, Any]) -> list[str]:
    """Brier score, ECE and the reliability bins of the calibrated probabilities."""
    halves = cal.get("halves", {})
    skipped = cal["folds_not_calibrated"]
    return [
        "",
        "## Calibrated probabilities",
        "",
        f"Each fold's calibrator ({cal['method']}) is fitted on its training subjects only; "
        f"the held-out subject is only scored. {cal['n']} clips in {cal['folds_calibrated']} "
        f"folds"
        + (f" ({len(skipped)} folds without: {', '.join(skipped)})" if skipped else "")
        + f". Brier score {_fmt(cal['brier'])} (0 = perfect; squared error summed over "
        f"classes), expected calibration error {_fmt(cal['ece'])} (top class, 10 bins); "
        + "; ".join(
            f"half {h}: Brier {_fmt(v['brier'])}, ECE {_fmt(v['ece'])}" for h, v in halves.items()
        )
        + f". The label stays the SVM's; the probabilities' argmax agrees with it on "
        f"{cal['argmax_agrees_with_label']:.1%} of the clips. Plot: reliability.png.",
        "",
        markdown_table(
            ["confidence bin", "clips", "mean confidence", "accuracy"],
            [
                [
                    f"{b['bin'][0]:.1f}-{b['bin'][1]:.1f}",
                    b["n"],
                    _fmt(b["confidence"]),
                    _fmt(b["accuracy"]),
                ]
                for b in cal["reliability"]
            ],
        ),
    ]


def _choices_section(folds: list[dict[str, Any]]) -> list[str]:
    """How many folds chose each (feature set, SVM settings)."""
    counts: dict[tuple[str, str], int] = {}
    for f in folds:
        key = (f["feature_set"], ", ".join(f"{k}={v}" for k, v in sorted(f["params"].items())))
        counts[key] = counts.get(key, 0) + 1
    return [
        "",
        "## Choices made inside the folds",
        "",
        markdown_table(
            ["feature set", "SVM", "folds"], [[a, b, n] for (a, b), n in sorted(counts.items())]
        ),
    ]


def _per_subject_section(per_subject: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            r["group"],
            r["n"],
            _fmt(r["accuracy"]),
            _fmt(r["majority_accuracy"]),
            r["feature_set"],
            _fmt(r["inner_score"]),
        ]
        for r in per_subject
    ]
    return [
        "",
        "## Per subject",
        "",
        markdown_table(
            ["subject", "n", "accuracy", "majority accuracy", "feature set", "inner score"], rows
        ),
    ]


def plot_confusion(cm: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(classes), 1.0 + 0.9 * len(classes)))
    ax.imshow(arr, cmap="Blues")
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(
                j,
                i,
                int(arr[i, j]),
                ha="center",
                va="center",
                color="white" if arr[i, j] > arr.max() / 2 else "black",
            )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_per_subject(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["group"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    maj = [r["majority_accuracy"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(rows) + 2), 3.5))
    x = np.arange(len(rows))
    ax.bar(x, acc, color="tab:blue", label="model")
    ax.scatter(x, maj, color="tab:red", marker="_", s=80, label="majority baseline", zorder=3)
    ax.set_xticks(x, names, rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_permutation_null(
    perm: dict[str, Any], majority: dict[str, Any], path: Path, title: str
) -> None:
    """One histogram of null scores per metric, the model's score and the majority baseline marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = perm["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, (name, v) in zip(axes[0], metrics.items()):
        ax.hist(
            v["null"],
            bins=50,
            range=(0, 1),
            color="tab:gray",
            label=f"null (N={perm['n_permutations']})",
        )
        ax.axvline(
            v["real"], color="tab:blue", lw=2, label=f"model {v['real']:.3f} (p {v['p_value']:.3f})"
        )
        ax.axvline(v["null_p95"], color="black", ls=":", label=f"null 95th pct {v['null_p95']:.3f}")
        if majority.get(name) is not None:
            ax.axvline(
                majority[name], color="tab:red", ls="--", label=f"majority {majority[name]:.3f}"
            )
        ax.set_xlim(0, 1)
        ax.set_xlabel(name.upper())
        ax.set_ylabel("permutations")
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_reliability(cal: dict[str, Any], path: Path, title: str) -> None:
    """Reliability diagram: accuracy against mean confidence per bin, sized by clip count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = cal["reliability"]
    conf = [b["confidence"] for b in bins]
    acc = [b["accuracy"] for b in bins]
    fig, ax = plt.subplots(figsize=(4.0, 4.0))
    ax.plot([0, 1], [0, 1], color="tab:gray", ls=":", label="perfect calibration")
    ax.plot(conf, acc, color="tab:blue", marker="o", label="calibrated probabilities")
    for c, a, b in zip(conf, acc, bins):
        ax.annotate(str(b["n"]), (c, a), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence of the top class (bin)")
    ax.set_ylabel("accuracy of the top class")
    ax.set_title(f"{title}\nBrier {_fmt(cal['brier'])}, ECE {_fmt(cal['ece'])}", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_report(result, out) -> dict[str, Path]:
    """Write the report files into `out` (created); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = results_document(result)
    paths = {
        "results": out / "results.json",
        "report": out / "report.md",
        "confusion": out / "confusion.png",
        "per_subject": out / "per_subject.png",
    }
    write_json(paths["results"], doc)
    write_text(paths["report"], report_markdown(doc))
    plot_confusion(
        doc["metrics"]["pooled"]["confusion"],
        doc["classes"],
        paths["confusion"],
        f"{doc['protocol']}: UF1 {_fmt(doc['metrics']['pooled']['uf1'])}",
    )
    plot_per_subject(
        doc["metrics"]["per_subject"],
        paths["per_subject"],
        f"{doc['protocol']}: accuracy per subject",
    )
    reliability = out / "reliability.png"
    if doc["metrics"].get("calibration"):
        paths["reliability"] = reliability
        plot_reliability(
            doc["metrics"]["calibration"], reliability, f"{doc['protocol']}: reliability"
        )
    else:
        reliability.unlink(missing_ok=True)  # an earlier run's plot would pass for this run's
    null_plot = out / "permutation_null.png"
    if doc["metrics"].get("permutation"):
        paths["permutation"] = null_plot
        plot_permutation_null(
            doc["metrics"]["permutation"],
            doc["metrics"]["majority"],
            null_plot,
            f"{doc['protocol']}: chance level by label permutation",
        )
    else:
        null_plot.unlink(missing_ok=True)  # an earlier run's null would pass for this run's
    return paths
