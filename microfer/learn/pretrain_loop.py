"""One pretraining epoch (`pretrain.pretrain` runs them, scores and checkpoints).

Everything random in an epoch -- order, flips, augmentation, batch mixing, dropout -- comes
from streams derived from (seed, epoch) only, and the learning rate is a pure function of
the epoch and step: that is what lets a resumed run give the same weights as an
uninterrupted one. Keep the order of the draws as it is, or trained weights change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from microfer.clip.representation import flip_input
from microfer.learn import augment, distill, mixing
from microfer.learn.macro_data import MacroSet
from microfer.learn.pretrain_settings import PretrainSettings


def warmup_factor(warmup_epochs: float, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Share of the epoch's learning rate at `step`: rising linearly to 1 over the first
    `warmup_epochs` (a pure function of the position, so a resumed run follows it exactly).
    Transformers trained from scratch diverge or collapse onto one class without it."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch * steps_per_epoch + step + 1) / (warmup_epochs * steps_per_epoch))


@dataclass
class TrainingRun:
    """What every epoch of one pretraining run works with (torch objects untyped: lazy)."""

    model: Any
    optimizer: Any
    data: MacroSet
    settings: PretrainSettings
    device: Any
    class_counts: np.ndarray  # float64, one per label
    class_weights: Any  # tensor n / (K x count), 0 for absent classes
    targets: Any  # tensor of data.y
    teacher: Optional[Any] = None


@dataclass
class EpochDraws:
    """The epoch's random choices, drawn up front from its own streams."""

    order: np.ndarray
    flips: np.ndarray
    aug: Optional[np.ndarray]
    mix_rng: np.random.Generator


@dataclass
class EpochStats:
    loss: float  # mean over the samples trained on
    train_accuracy: float
    lr: float  # the epoch's cosine rate, before warm-up


def draw_epoch(settings: PretrainSettings, epoch: int, n: int) -> EpochDraws:
    rng = np.random.default_rng([settings.seed, epoch])
    order, flips = rng.permutation(n), rng.random(n) < 0.5
    aug = augment.draw(rng, n) if settings.augment else None
    mix_rng = np.random.default_rng(
        [settings.seed, epoch, 1]
    )  # its own stream: "none" runs unchanged
    return EpochDraws(order, flips, aug, mix_rng)


def train_epoch(run: TrainingRun, epoch: int) -> EpochStats:
    """Train `run.model` one epoch (0-based `epoch`) at the cosine rate of that epoch."""
    import torch

    s, n = run.settings, len(run.data)
    lr = s.lr * 0.5 * (1 + math.cos(math.pi * epoch / s.epochs))
    draws = draw_epoch(s, epoch, n)
    torch.manual_seed(s.seed * 1_000_003 + epoch)  # dropout stream of this epoch
    run.model.train()
    total_loss, correct, seen = 0.0, 0, 0
    steps = math.ceil(n / s.batch_size)
    for step, start_i in enumerate(range(0, n, s.batch_size)):
        idx = draws.order[start_i : start_i + s.batch_size]
        for group in run.optimizer.param_groups:
            group["lr"] = lr * warmup_factor(s.warmup_epochs, epoch, step, steps)
        if idx.size < 2:  # BatchNorm cannot train on one sample
            continue
        loss, hits = _train_step(run, idx, draws)
        total_loss += loss * idx.size
        correct += hits
        seen += idx.size
    return EpochStats(total_loss / max(seen, 1), correct / max(seen, 1), lr)


def _train_step(run: TrainingRun, idx: np.ndarray, draws: EpochDraws) -> tuple[float, int]:
    """One optimiser step on samples `idx`; returns (loss, correctly classified count)."""
    import torch
    import torch.nn.functional as F

    s, data = run.settings, run.data
    x = data.batch(idx, None if draws.aug is None else draws.aug[idx])
    f = draws.flips[idx]
    if f.any():
        x[f] = flip_input(x[f], data.representation)
    yb = run.targets[idx].to(run.device)
    if s.mix != "none":
        x, soft = mixing.mix_batch(x, data.y[idx], len(data.labels), s.mix, draws.mix_rng)
        # soft targets: the class weights scale each class's share of a mixed label
        loss_target = torch.from_numpy(soft).to(run.device)
    else:
        loss_target = yb
    xb = torch.from_numpy(x).to(run.device)
    logits = run.model(xb)
    loss = F.cross_entropy(logits, loss_target, weight=run.class_weights)
    if run.teacher is not None:
        loss = distill.distill_loss(
            logits, yb, loss, run.teacher, xb, s.distill_alpha, s.distill_temperature
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return float(loss.detach()), int((logits.argmax(1) == yb).sum())
