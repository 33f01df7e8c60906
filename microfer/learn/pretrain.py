"""Pretrain a backbone on MACRO-expression data: MobileViT's MV2 block or whole trunk, or a ViT.

Macro-expressions are the same facial movements as micro-expressions, larger and far more
plentiful; a network that learnt to see them gives the frozen extractor better filters
than random ones. The data (`macro_data.py`): a prepare cache of macro clips preprocessed
EXACTLY like micro samples (any representation), and/or face-image folders (apex only):
FER-2013-style ROOT/<split>/<emotion>/ and split-less folders split by subject (CK+).

Scopes (`microfer.models.weights`):
- mv2 (MobileViT v1 / v2): MV2 block (stem, stages.0, stages.1) + a small head (1x1 conv,
  BN, SiLU, global average pool, dropout, linear);
- whole, MobileViT: the whole trunk up to final_conv + global average pool, dropout,
  linear -- the head a timm MobileViT classifier has;
- whole, ViT (vit_tiny_patch16_224, vit_small_patch16_224): the encoder at `input_size`
  + dropout, linear on its class token -- timm's ViT head.
Loss: class-weighted cross-entropy (macro emotion sets are imbalanced); AdamW with a cosine
learning rate that is a pure function of the epoch (times an optional linear warm-up, a pure
function of the step); augmentation (`augment.py`): flips
for every representation (flow u negated), and for image faces a random shift / scale /
small rotation and brightness / contrast. Every epoch draws its order, flips and
augmentation from RNG streams derived from (seed, epoch) only, and the checkpoint keeps
the model AND the AdamW moments, so a resumed run gives the same weights as an
uninterrupted one.

Held-out test sets (FER-2013 test split, CK+ test subjects) are evaluated after every
epoch and only reported (history, card): they choose nothing -- no early stopping, no
epoch picking; the weights saved are those of the last epoch.

Output folder: <stem>.safetensors + <stem>.json (stem mv2_block or trunk; what `microfer
loso --weights` loads), checkpoint.safetensors + checkpoint.json (for --resume).

This module runs a pretraining and writes its card; the parts live beside it, and their
public names stay importable from here: the network (`pretrain_classifier.py`), one epoch
(`pretrain_loop.py`), the checkpoint (`pretrain_checkpoint.py`), the settings
(`pretrain_settings.py`), the data (`macro_data.py`) and real starts (`starts.py`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from microfer.clip.representation import check_kind
from microfer.errors import MicroferError
from microfer.io import atomic_dir, package_versions
from microfer.learn import augment, distill, mixing
from microfer.learn.macro_data import (  # noqa: F401  (re-exported: the pretraining API in one place)
    CK_SUBJECT_PATTERN,
    IMAGE_SUFFIXES,
    MacroSet,
    combine,
    load_cache_samples,
    load_image_folder,
    load_images_by_subject,
    normalise_label,
    split_subjects,
)
from microfer.learn.pretrain_checkpoint import (  # noqa: F401  (CHECKPOINT_FORMAT re-exported)
    CHECKPOINT_FORMAT,
    load_checkpoint,
    save_checkpoint,
)
from microfer.learn.pretrain_classifier import build_classifier
from microfer.learn.pretrain_loop import (  # noqa: F401  (warmup_factor re-exported)
    TrainingRun,
    train_epoch,
    warmup_factor,
)
from microfer.learn.pretrain_settings import PretrainSettings
from microfer.learn.starts import LITE0, lite0_classifier, start_weights  # noqa: F401  (re-exported)
from microfer.metrics import accuracy, confusion_matrix, uf1
from microfer.models.weights import STORE_DTYPES, check_scope, save_block_weights


@dataclass
class PretrainResult:
    weights: Path
    meta: dict[str, Any]
    history: list[dict[str, float]]
    resumed_from: int = 0


def _test_hash(test_sets: Mapping[str, MacroSet]) -> Optional[str]:
    if not test_sets:
        return None
    return hashlib.sha256(
        "|".join(f"{k}:{v.data_hash()}" for k, v in sorted(test_sets.items())).encode()
    ).hexdigest()


def evaluate_sets(
    model, test_sets: Mapping[str, MacroSet], labels: list[str], batch_size: int = 128, device=None
) -> dict[str, dict[str, Any]]:
    """Accuracy and macro F1 of `model` (trained on `labels`) on each held-out set.

    Main numbers: the prediction is restricted to the set's own label set (a FER-2013
    face is never called "contempt", which FER-2013 does not have), which is how FER-2013
    numbers are reported (7-way); `*_all_labels`: argmax over every trained label. Macro
    F1 is `metrics.uf1` (mean F1 over the classes in the truth or the predictions).
    Samples whose label the model never saw are left out and counted.
    """
    import torch

    out: dict[str, dict[str, Any]] = {}
    was_training = model.training
    model.eval()
    for name, ts in sorted(test_sets.items()):
        own = [labels.index(l) for l in ts.labels if l in labels]
        to_train = np.array([labels.index(l) if l in labels else -1 for l in ts.labels], np.int64)
        y = to_train[ts.y]
        idx = np.flatnonzero(y >= 0)
        logits = []
        with torch.inference_mode():
            for i in range(0, idx.size, batch_size):
                xb = torch.from_numpy(ts.batch(idx[i : i + batch_size])).to(device)
                logits.append(model(xb).float().cpu().numpy())
        z = np.concatenate(logits) if logits else np.zeros((0, len(labels)), np.float32)
        mask = np.full(len(labels), -np.inf, np.float32)
        mask[own] = 0.0
        row: dict[str, Any] = {"n": int(idx.size)}
        for suffix, pred in (("", (z + mask).argmax(1)), ("_all_labels", z.argmax(1))):
            cm = confusion_matrix(y[idx], pred, len(labels))
            row[f"accuracy{suffix}"] = round(accuracy(cm), 6) if idx.size else None
            row[f"macro_f1{suffix}"] = round(uf1(cm), 6) if idx.size else None
        if idx.size < len(ts):
            row["left_out_unknown_label"] = int(len(ts) - idx.size)
        out[name] = row
    model.train(was_training)
    return out


def pretrain(
    data: MacroSet,
    settings: PretrainSettings,
    out,
    resume: bool = False,
    progress: bool = True,
    test_sets: Optional[Mapping[str, MacroSet]] = None,
    notes: Optional[Mapping[str, Any]] = None,
) -> PretrainResult:
    """Train `settings.scope` + head on `data`; write its weights (and checkpoints) into `out`.

    `test_sets` (name -> held-out MacroSet) are scored after every epoch, for the record
    only. `notes` (e.g. the command line) are added to the weights JSON.
    """
    _check_inputs(data, settings, test_sets or {})
    test_sets = dict(test_sets or {})
    out = Path(out)
    staging = staging_dir(out)
    _check_start(out, staging, resume)
    run, start_card = _start_run(data, settings)
    identity = {
        "settings": settings.identity(),
        "labels": data.labels,
        "data_hash": data.data_hash(),
        "test_hash": _test_hash(test_sets),
    }
    # Every epoch's checkpoint goes to the staging folder, and `out` is swapped for it
    # only once the weights are written: a crash or Ctrl+C leaves an older `out` whole,
    # and --resume picks the run up from the staging folder's checkpoint.
    with atomic_dir(out, is_ours=_is_pretrain_output, staging=staging) as work:
        start, history = _resume_point(run, out, work, identity, resume)
        epochs = _epoch_bar(start, settings.epochs) if progress else range(start, settings.epochs)
        for epoch in epochs:
            record = _run_epoch(run, epoch, test_sets)
            history.append(record)
            if progress:
                epochs.set_postfix(
                    loss=record["loss"],
                    acc=record["train_accuracy"],
                    **{f"{k[:6]}_acc": v["accuracy"] for k, v in record.get("test", {}).items()},
                )
            save_checkpoint(
                run.model,
                run.optimizer,
                work,
                {
                    **identity,
                    "epochs": settings.epochs,
                    "epochs_done": epoch + 1,
                    "history": history,
                },
            )

        meta = _weights_card(run, identity, history, start_card, test_sets, notes)
        staged = save_block_weights(
            run.model.cpu(), work, meta, scope=settings.scope, store_dtype=settings.store_dtype
        )
    weights_path = out / staged.name
    return PretrainResult(weights=weights_path, meta=meta, history=history, resumed_from=start)


def staging_dir(out: Path) -> Path:
    """Where a pretraining into `out` runs until it is complete: a hidden sibling of `out`."""
    return out.parent / f".{out.name}.pretraining"


def _is_pretrain_output(path: Path) -> bool:
    return (path / "checkpoint.json").is_file()


def _check_start(out: Path, staging: Path, resume: bool) -> None:
    """Refuse to start afresh over a run that --resume could continue."""
    if resume:
        return
    if _is_pretrain_output(staging):
        raise MicroferError(
            f"{staging}: holds an unfinished pretraining of {out}; pass --resume to continue "
            f"it, or delete that folder to start again"
        )
    if _is_pretrain_output(out):
        raise MicroferError(
            f"{out}: holds a pretraining checkpoint; pass --resume to continue it (more "
            f"--epochs), or choose another --out"
        )


def _check_inputs(
    data: MacroSet, settings: PretrainSettings, test_sets: Mapping[str, MacroSet]
) -> None:
    check_kind(settings.representation)
    check_scope(settings.scope, settings.variant)
    mixing.check_mix(settings.mix)
    if settings.store_dtype not in STORE_DTYPES:
        raise MicroferError(
            f"unknown storage dtype {settings.store_dtype!r}; expected one of {', '.join(STORE_DTYPES)}"
        )
    for name, ts in [("training data", data)] + list(test_sets.items()):
        if ts.representation != settings.representation or ts.input_size != settings.input_size:
            raise MicroferError(
                f"macro {name} are {ts.representation!r} at {ts.input_size}px, settings ask for "
                f"{settings.representation!r} at {settings.input_size}px"
            )
    if len(data) == 0 or len(data.labels) < 2:
        raise MicroferError(
            f"pretraining needs samples of at least 2 emotions, got {len(data)} samples "
            f"of {data.labels}"
        )
    if settings.epochs < 1 or settings.batch_size < 2:
        raise MicroferError("pretraining needs epochs >= 1 and batch_size >= 2")


def _start_run(data: MacroSet, settings: PretrainSettings) -> tuple[TrainingRun, Optional[dict]]:
    """The model at its starting weights, its optimiser and loss; and the card of the start."""
    import torch

    if settings.num_threads:
        torch.set_num_threads(int(settings.num_threads))
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_classifier(
        settings.variant,
        len(data.labels),
        settings.seed,
        settings.head_channels,
        settings.dropout,
        settings.scope,
        settings.input_size,
    )
    start_card = start_weights(model, settings)
    model = model.to(device)
    teacher = distill.load_for(data.labels, settings.teacher, device) if settings.teacher else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    n = len(data)
    counts = np.bincount(data.y, minlength=len(data.labels)).astype(np.float64)
    weights = torch.tensor(
        np.where(counts > 0, n / (len(data.labels) * np.maximum(counts, 1)), 0.0),
        dtype=torch.float32,
        device=device,
    )
    run = TrainingRun(
        model=model,
        optimizer=optimizer,
        data=data,
        settings=settings,
        device=device,
        class_counts=counts,
        class_weights=weights,
        targets=torch.from_numpy(data.y),
        teacher=teacher,
    )
    return run, start_card


def _resume_point(
    run: TrainingRun, out: Path, work: Path, identity: dict[str, Any], resume: bool
) -> tuple[int, list[dict[str, Any]]]:
    """(epochs done, their history): from the checkpoint in the staging folder `work` (an
    interrupted run), else from the one in `out` (a finished run given more epochs)."""
    source = next((d for d in (work, out) if resume and _is_pretrain_output(d)), None)
    if source is None:
        return 0, []
    doc = load_checkpoint(run.model, run.optimizer, source, identity)
    if source == out:  # the new `out` starts from it, even when no epoch is left to train
        import shutil

        for name in ("checkpoint.safetensors", "checkpoint.json"):  # the .json last: it vouches
            shutil.copy2(out / name, work / name)
    return int(doc["epochs_done"]), list(doc.get("history", []))


def _run_epoch(run: TrainingRun, epoch: int, test_sets: Mapping[str, MacroSet]) -> dict[str, Any]:
    """Train one epoch and score the held-out sets: the epoch's history record."""
    t0 = time.perf_counter()
    stats = train_epoch(run, epoch)
    train_s = time.perf_counter() - t0
    record = {
        "epoch": epoch + 1,
        "loss": round(stats.loss, 6),
        "train_accuracy": round(stats.train_accuracy, 6),
        "lr": stats.lr,
        "train_s": round(train_s, 1),
    }
    if test_sets:
        record["test"] = evaluate_sets(run.model, test_sets, run.data.labels, device=run.device)
        record["test_s"] = round(time.perf_counter() - t0 - train_s, 1)
    return record


def _epoch_bar(start: int, epochs: int):
    from tqdm import tqdm

    return tqdm(
        range(start, epochs),
        desc="pretrain",
        unit="epoch",
        initial=start,
        total=epochs,
        disable=None,
    )


def _weights_card(
    run: TrainingRun,
    identity: Mapping[str, Any],
    history: list[dict[str, Any]],
    start_card: Optional[dict],
    test_sets: Mapping[str, MacroSet],
    notes: Optional[Mapping[str, Any]],
) -> dict[str, Any]:
    """The JSON written beside the weights: what they were trained on, how, and the scores."""
    data, settings = run.data, run.settings
    meta = {
        "variant": settings.variant,
        "representation": settings.representation,
        "input_size": settings.input_size,
        "labels": data.labels,
        "data_hash": identity["data_hash"],
        "n_samples": len(data),
        "class_counts": {l: int(c) for l, c in zip(data.labels, run.class_counts)},
        "epochs": settings.epochs,
        "seed": settings.seed,
        "settings": settings.identity(),
        "sources": data.sources,
        "skipped": data.skipped,
        "history": history,
        "versions": package_versions(),
        "training_data": data.parts,
        "augmentation": {
            **(augment.describe() if settings.augment else {"horizontal_flip": 0.5}),
            "batch": mixing.describe(settings.mix),
        },
        "loss": "class-weighted cross-entropy (weight n / (K x count))",
        "schedule": _schedule(settings),
    }
    if start_card:
        meta["start"] = start_card
    if run.teacher is not None:
        meta["distillation"] = distill.describe(
            run.teacher, settings.distill_alpha, settings.distill_temperature
        )
    if test_sets:
        meta["test_data"] = [p for ts in test_sets.values() for p in ts.parts]
        meta["test_hash"] = identity["test_hash"]
        meta["test_metrics"] = history[-1].get("test") if history else None
        meta["test_note"] = (
            "held-out data, scored after every epoch for the record only: no early stopping, "
            "no epoch choice; the weights are those of the last epoch"
        )
    meta.update(dict(notes or {}))
    return meta


def _schedule(settings: PretrainSettings) -> str:
    warmup = (
        f", linear warm-up over the first {settings.warmup_epochs:g} epochs (per step)"
        if settings.warmup_epochs
        else ""
    )
    return (
        f"AdamW, cosine learning rate from {settings.lr} over {settings.epochs} epochs (per epoch)"
        f"{warmup}, weight decay {settings.weight_decay}, batch {settings.batch_size}"
    )
