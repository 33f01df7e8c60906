"""Pretraining runs side by side: backbone x augmentation -> held-out accuracy, macro F1, time.

    microfer pretrain-report RUN [RUN ...] --out DIR

Each RUN is a `microfer pretrain --out` folder. A finished run is read from its weights
card (trunk.json / mv2_block.json), an unfinished one from its checkpoint (marked with the
epochs it has done). The numbers are those the runs recorded after their last epoch -- the
test sets chose nothing in them -- so the table is a view of the cards, not a new measure.

Writes DIR/pretrain_table.md (one row per run), DIR/pretrain_table.json and
DIR/pretrain_table.png (macro F1 of each test set as a backbone x augmentation grid).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from microfer.errors import MicroferError
from microfer.io import atomic_path, write_json, write_text
from microfer.models.weights import WEIGHTS_STEMS, read_block_meta

MIX_ORDER = ("none", "cutout", "mixup", "cutmix", "fmix")


@dataclass
class RunRow:
    run: str  # the folder
    variant: str
    mix: str
    scope: str
    input_size: int
    lr: float  # the peak learning rate
    warmup_epochs: float
    epochs_done: int
    epochs: Optional[int]  # planned (the cosine schedule's length); None: unknown
    finished: bool  # the run wrote its weights
    test: dict[str, dict[str, Any]] = field(default_factory=dict)  # set -> accuracy, macro_f1, n
    s_per_epoch: Optional[float] = None  # median training time of one epoch
    s_per_epoch_range: tuple[float, float] = (0.0, 0.0)


def read_run(folder) -> RunRow:
    """One pretraining run's row (MicroferError naming the folder when it holds none)."""

    folder = Path(folder)
    cards = [
        folder / f"{stem}.json"
        for stem in WEIGHTS_STEMS.values()
        if (folder / f"{stem}.json").is_file()
    ]
    if cards:
        doc = read_block_meta(cards[0])
        settings, history, epochs = (
            doc.get("settings", {}),
            doc.get("history", []),
            doc.get("epochs"),
        )
    elif (folder / "checkpoint.json").is_file():
        try:
            doc = json.loads((folder / "checkpoint.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MicroferError(f"{folder / 'checkpoint.json'}: unreadable ({exc})") from None
        settings, history, epochs = (
            doc.get("settings", {}),
            doc.get("history", []),
            doc.get("epochs"),
        )
    else:
        raise MicroferError(
            f"{folder}: no pretraining run here (no weights card, no checkpoint.json)"
        )
    if not history or "variant" not in settings:
        raise MicroferError(f"{folder}: the run records no finished epoch")
    times = [float(h["train_s"]) for h in history if "train_s" in h]
    return RunRow(
        run=str(folder),
        variant=settings["variant"],
        mix=settings.get("mix", "none"),
        scope=settings.get("scope", "mv2"),
        input_size=int(settings.get("input_size", 0)),
        lr=float(settings.get("lr", 0.0)),
        warmup_epochs=float(settings.get("warmup_epochs", 0.0)),
        epochs_done=len(history),
        epochs=int(epochs) if epochs else None,
        finished=bool(cards),
        test={
            k: {m: v.get(m) for m in ("accuracy", "macro_f1", "n")}
            for k, v in sorted(history[-1].get("test", {}).items())
        },
        s_per_epoch=float(np.median(times)) if times else None,
        s_per_epoch_range=(min(times), max(times)) if times else (0.0, 0.0),
    )


def markdown(rows: Sequence[RunRow]) -> str:
    sets = sorted({k for r in rows for k in r.test})
    head = (
        ["backbone", "--mix", "epochs", "lr (warm-up epochs)"]
        + [f"{s} accuracy / macro F1" for s in sets]
        + ["s per epoch (median, range)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        epochs = (
            str(r.epochs_done)
            if r.finished
            else f"{r.epochs_done} of {r.epochs or '?'} (unfinished)"
        )
        cells = [r.variant, r.mix, epochs, f"{r.lr:g} ({r.warmup_epochs:g})"]
        for s in sets:
            t = r.test.get(s)
            cells.append(
                f"{t['accuracy']:.3f} / {t['macro_f1']:.3f}"
                if t and t.get("accuracy") is not None
                else ""
            )
        lo, hi = r.s_per_epoch_range
        cells.append(
            f"{r.s_per_epoch:.0f} ({lo:.0f}-{hi:.0f})" if r.s_per_epoch is not None else ""
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _config_labels(rows: Sequence[RunRow]) -> list[str]:
    """A grid row per backbone; runs of one backbone with another length or learning rate
    get rows of their own (named by what differs)."""
    configs = {}
    for r in rows:
        configs.setdefault(r.variant, set()).add((r.epochs_done, r.lr, r.warmup_epochs))
    out = []
    for r in rows:
        if len(configs[r.variant]) == 1:
            out.append(r.variant)
        else:
            out.append(
                f"{r.variant}\n{r.epochs_done} ep, lr {r.lr:g}"
                + (f", warm-up {r.warmup_epochs:g}" if r.warmup_epochs else "")
            )
    return out


def plot_grid(rows: Sequence[RunRow], path: Path) -> None:
    """Macro F1 per test set: a (backbone, run length) x --mix grid each, on a 0-1 scale,
    the number in every cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({k for r in rows for k in r.test})
    labels = _config_labels(rows)
    configs = list(dict.fromkeys(labels))
    mixes = [m for m in MIX_ORDER if any(r.mix == m for r in rows)]
    fig, axes = plt.subplots(
        1,
        max(len(sets), 1),
        figsize=(1.3 * len(mixes) * max(len(sets), 1) + 4, 0.7 * len(configs) + 1.8),
        squeeze=False,
    )
    for ax, name in zip(axes[0], sets):
        grid = np.full((len(configs), len(mixes)), np.nan)
        for r, label in zip(rows, labels):
            t = r.test.get(name)
            if t and t.get("macro_f1") is not None and r.mix in mixes:
                grid[configs.index(label), mixes.index(r.mix)] = t["macro_f1"]
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=1)
        for i in range(len(configs)):
            for j in range(len(mixes)):
                if np.isfinite(grid[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.2f}",
                        ha="center",
                        va="center",
                        color="w" if grid[i, j] < 0.6 else "k",
                        fontsize=9,
                    )
        ax.set_xticks(range(len(mixes)), mixes)
        ax.set_yticks(range(len(configs)), configs, fontsize=8)
        ax.set_title(f"{name}: macro F1 (test split)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_report(folders: Sequence, out) -> dict[str, Path]:
    """Read every run folder, write the table (md + json) and the plot into `out`."""
    if not folders:
        raise MicroferError("name at least one pretraining run folder")
    rows = [read_run(f) for f in folders]
    # grouped by backbone (in the order given), then --mix in a fixed order, then length
    first = {v: i for i, v in reversed(list(enumerate(r.variant for r in rows)))}
    rows.sort(
        key=lambda r: (
            first[r.variant],
            MIX_ORDER.index(r.mix) if r.mix in MIX_ORDER else len(MIX_ORDER),
            r.epochs_done,
            r.lr,
        )
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "pretrain_table.md",
        "json": out / "pretrain_table.json",
        "plot": out / "pretrain_table.png",
    }
    write_text(paths["markdown"], markdown(rows))
    write_json(paths["json"], {"rows": [asdict(r) for r in rows]})
    plot_grid(rows, paths["plot"])
    return paths
