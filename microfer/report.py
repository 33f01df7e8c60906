"""A LOSO result -> an output folder: results.json, report.md, confusion.png, per_subject.png.

Everything in results.json except the "timings" block is a deterministic function of the
inputs and settings: the same command twice gives the same numbers (and the same file
apart from timings). All files are written atomically.
"""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from microfer._io import atomic_path, write_json, write_text


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("microfer", "numpy", "scikit-learn", "pandas", "torch", "timm", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def results_document(result) -> dict[str, Any]:
    """The JSON-ready content of results.json."""
    samples = result.samples
    classes = result.classes
    folds = []
    for r in result.folds:
        preds = []
        for i, p in zip(r.test_idx, r.y_pred):
            row = samples.iloc[i]
            preds.append({"key": str(row["key"]), "dataset": str(row["dataset"]), "subject": str(row["subject"]),
                          "clip": str(row["clip"]), "true": classes[int(result.y[i])], "pred": classes[int(p)]})
        folds.append({"group": r.group, "n_train": r.n_train, "n_test": len(r.test_idx),
                      "feature_set": r.feature_name, "params": r.params, "inner_score": r.inner_score,
                      "majority": classes[r.majority], "predictions": preds})
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
        "excluded": result.excluded[["dataset", "subject", "clip", "reason"]].astype(str).to_dict(orient="records"),
        "folds": folds,
        "timings": result.timings,
    }


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(doc: dict[str, Any]) -> str:
    m = doc["metrics"]
    classes = doc["classes"]
    parts = [f"# LOSO report: {doc['protocol']}", ""]
    parts.append(f"{doc['n_samples']} samples evaluated in {m['n_folds']} folds (one per subject); "
                 f"{m['excluded']['count']} of {m['excluded']['of']} protocol samples excluded "
                 f"(not in the cache or failed to prepare).")
    parts.append(f"Grid `{doc['settings']['grid']}`, seed {doc['seed']}, inner CV on training subjects only "
                 f"({doc['settings']['inner_splits']} splits, scored by {doc['settings']['scoring']}).")
    parts.append("Metrics are computed on the confusion matrix pooled over all folds (MEGC style). "
                 "UF1 skips classes absent from both truth and predictions; UAR averages recall over "
                 "classes present in the truth. The majority baseline predicts each fold's most "
                 "frequent training class.")
    parts += ["", "## Pooled", ""]
    parts.append(_table(["", "UF1", "UAR", "accuracy", "n"], [
        ["model", _fmt(m["pooled"]["uf1"]), _fmt(m["pooled"]["uar"]), _fmt(m["pooled"]["accuracy"]), m["pooled"]["n"]],
        ["majority baseline", _fmt(m["majority"]["uf1"]), _fmt(m["majority"]["uar"]),
         _fmt(m["majority"]["accuracy"]), m["majority"]["n"]],
    ]))
    if len(m.get("per_dataset", {})) > 1:
        parts += ["", "## Per dataset", ""]
        rows = [[ds, _fmt(v["model"]["uf1"]), _fmt(v["model"]["uar"]), _fmt(v["model"]["accuracy"]),
                 _fmt(v["majority"]["uf1"]), v["model"]["n"]] for ds, v in m["per_dataset"].items()]
        parts.append(_table(["dataset", "UF1", "UAR", "accuracy", "majority UF1", "n"], rows))
    parts += ["", "## Per class", ""]
    pc = m["pooled"]["per_class"]
    parts.append(_table(["class", "F1", "recall", "precision", "support", "predicted"],
                        [[c, _fmt(pc[c]["f1"]), _fmt(pc[c]["recall"]), _fmt(pc[c]["precision"]),
                          pc[c]["support"], pc[c]["predicted"]] for c in classes]))
    parts += ["", "## Confusion (rows = truth, columns = prediction)", ""]
    cm = m["pooled"]["confusion"]
    parts.append(_table([""] + classes, [[c] + cm[i] for i, c in enumerate(classes)]))
    parts += ["", "## Choices made inside the folds", ""]
    counts: dict[tuple[str, str], int] = {}
    for f in doc["folds"]:
        key = (f["feature_set"], ", ".join(f"{k}={v}" for k, v in sorted(f["params"].items())))
        counts[key] = counts.get(key, 0) + 1
    parts.append(_table(["feature set", "SVM", "folds"], [[a, b, n] for (a, b), n in sorted(counts.items())]))
    parts += ["", "## Per subject", ""]
    parts.append(_table(["subject", "n", "accuracy", "majority accuracy", "feature set", "inner score"],
                        [[r["group"], r["n"], _fmt(r["accuracy"]), _fmt(r["majority_accuracy"]),
                          r["feature_set"], _fmt(r["inner_score"])] for r in m["per_subject"]]))
    if doc["excluded"]:
        parts += ["", "## Excluded samples", ""]
        parts.append(_table(["reason", "count"], [[k, v] for k, v in m["excluded"]["by_reason"].items()]))
    parts += ["", "## Versions", ""]
    parts.append(", ".join(f"{k} {v}" for k, v in doc["versions"].items()))
    return "\n".join(parts) + "\n"


def plot_confusion(cm: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(classes), 1.0 + 0.9 * len(classes)))
    ax.imshow(arr, cmap="Blues")
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(j, i, int(arr[i, j]), ha="center", va="center",
                    color="white" if arr[i, j] > arr.max() / 2 else "black")
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


def write_report(result, out) -> dict[str, Path]:
    """Write the four report files into `out` (created); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = results_document(result)
    paths = {"results": out / "results.json", "report": out / "report.md",
             "confusion": out / "confusion.png", "per_subject": out / "per_subject.png"}
    write_json(paths["results"], doc)
    write_text(paths["report"], report_markdown(doc))
    plot_confusion(doc["metrics"]["pooled"]["confusion"], doc["classes"], paths["confusion"],
                   f"{doc['protocol']}: UF1 {_fmt(doc['metrics']['pooled']['uf1'])}")
    plot_per_subject(doc["metrics"]["per_subject"], paths["per_subject"], f"{doc['protocol']}: accuracy per subject")
    return paths
