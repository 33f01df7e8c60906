"""STRS (spot-then-recognise) of a spot-eval run: the spotting F1 x the recognition UF1 on the
true-positive micro intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from microfer.clip.video import open_frames
from microfer.metrics import summarize as class_summary
from microfer.recognise.predict import Predictor
from microfer.spotting.spot import SpottedInterval, recognise_micro
from microfer.spotting.spot_scores import match
from microfer.spotting.video_signals import VideoData


def spot_then_recognise(
    videos: Sequence[VideoData], spotted: list[dict], root: Path, model: Path, spot_f1: float
) -> dict:
    """STRS: recognise every true-positive micro interval (matched to a true micro interval
    whose `label` the bundle knows) and multiply the spotting F1 by the recognition UF1."""
    predictor = Predictor(model)
    classes = list(predictor.classes)
    by_video = {s["video"]: s for s in spotted}
    y_true, y_pred, skipped = [], [], 0
    for v in videos:
        ivs = [SpottedInterval(**d) for d in by_video[v.video]["intervals"] if d["type"] == "micro"]
        truth = v.truth[v.truth["type"] == "micro"].reset_index(drop=True)
        pairs = match(
            [(iv.onset, iv.offset) for iv in ivs], list(zip(truth["onset"], truth["offset"]))
        )
        hits = [(ivs[i], truth["label"][j]) for i, j in pairs if truth["label"][j] in classes]
        skipped += len(pairs) - len(hits)
        if not hits:
            continue
        failed = {
            id(iv)
            for iv, _ in recognise_micro(
                [iv for iv, _ in hits], open_frames(Path(root) / v.video), predictor
            )
        }
        for iv, label in hits:
            y_true.append(classes.index(label))
            # an interval the classifier could not take counts as wrong
            y_pred.append(
                classes.index(iv.emotion) if id(iv) not in failed and iv.emotion in classes else -1
            )
    wrong = [(t + 1) % len(classes) for t in y_true]
    y_pred = [p if p >= 0 else w for p, w in zip(y_pred, wrong)]
    scores = class_summary(np.array(y_true, int), np.array(y_pred, int), classes)
    uf1 = scores["uf1"] or 0.0
    return {
        "strs": spot_f1 * uf1,
        "spot_f1": spot_f1,
        "uf1": uf1,
        "n": len(y_true),
        "skipped_without_label": skipped,
        "recognition": scores,
        "model": str(model),
    }
