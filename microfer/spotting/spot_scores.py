"""MEGC spotting scores: IoU matching of spotted to ground-truth intervals, and precision /
recall / F1 per type and overall (the rules are in `spot_eval`'s docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd

from microfer.spotting.spot import SpottedInterval

IOU_MIN = 0.5
TYPES = ("micro", "macro")


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """IoU of two frame intervals (onset, offset), both ends included."""
    overlap = min(a[1], b[1]) - max(a[0], b[0]) + 1
    if overlap <= 0:
        return 0.0
    union = (a[1] - a[0] + 1) + (b[1] - b[0] + 1) - overlap
    return overlap / union


def match(
    spotted: Sequence[tuple[int, int]], truth: Sequence[tuple[int, int]], iou_min: float = IOU_MIN
) -> list[tuple[int, int]]:
    """(spotted index, truth index) pairs with IoU >= iou_min, one-to-one, best IoU first."""
    pairs = sorted(
        ((iou(s, t), i, j) for i, s in enumerate(spotted) for j, t in enumerate(truth)),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    used_s, used_t, out = set(), set(), []
    for value, i, j in pairs:
        if value < iou_min:
            break
        if i in used_s or j in used_t:
            continue
        used_s.add(i)
        used_t.add(j)
        out.append((i, j))
    return sorted(out)


@dataclass
class Counts:
    tp: int = 0
    spotted: int = 0
    truth: int = 0

    def __iadd__(self, other: "Counts") -> "Counts":
        self.tp += other.tp
        self.spotted += other.spotted
        self.truth += other.truth
        return self

    def scores(self) -> dict:
        p = self.tp / self.spotted if self.spotted else 0.0
        r = self.tp / self.truth if self.truth else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        return {
            "tp": self.tp,
            "fp": self.spotted - self.tp,
            "fn": self.truth - self.tp,
            "precision": p,
            "recall": r,
            "f1": f1,
        }


def count_video(spotted: Sequence[SpottedInterval], truth: pd.DataFrame) -> dict[str, Counts]:
    """Counts per type for one video: spotted intervals vs its ground-truth rows (onset, offset, type)."""
    out = {}
    for kind in TYPES:
        s = [(iv.onset, iv.offset) for iv in spotted if iv.type == kind]
        t = [(int(r.onset), int(r.offset)) for r in truth.itertuples() if r.type == kind]
        out[kind] = Counts(len(match(s, t)), len(s), len(t))
    return out


def pooled_counts(
    videos: Iterable[tuple[Sequence[SpottedInterval], pd.DataFrame]],
) -> dict[str, Counts]:
    """Counts per type summed over videos, each given as (its spotted intervals, its truth)."""
    per_type = {k: Counts() for k in TYPES}
    for spotted, truth in videos:
        for kind, c in count_video(spotted, truth).items():
            per_type[kind] += c
    return per_type


def summarize(per_type: dict[str, Counts]) -> dict:
    total = Counts()
    for c in per_type.values():
        total += c
    return {"overall": total.scores(), **{k: per_type[k].scores() for k in TYPES}}
