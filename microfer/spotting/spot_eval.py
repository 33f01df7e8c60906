"""MEGC spotting evaluation: IoU matching, precision / recall / F1 per type, thresholds chosen
inside the folds.

Rules (MEGC 2020-2023 spotting, CAS(ME)^2 and SAMM Long Videos):
- a spotted interval [on, off] is a true positive when its IoU with a ground-truth interval
  of the same type is >= 0.5, IoU = |overlap| / |union| in frames (both ends included);
  each ground-truth interval is matched at most once (best IoU first), so a second spot of
  the same expression is a false positive;
- per type (micro, macro): P = TP / spotted, R = TP / ground truth, F1 = 2PR / (P + R);
  overall: the same with TP, spotted and ground truth summed over both types; all counts
  pooled over every video of every fold (not averaged per video);
- STRS (spot-then-recognise): overall spotting F1 x the recognition UF1 on the true-positive
  micro intervals (only when a model is given).

Every parameter that is chosen from data (the peak threshold and the blink ratio of
`spot.PeakSettings`, and the baselines' thresholds) is chosen on the TRAINING subjects of
each leave-one-subject-out fold, by the best pooled overall F1 there, and only then applied
to the held-out subject. Several published spotters pick their threshold or epoch on the
test subject; their F1 is optimistic by that choice.

Protocols (names on the command line): `casme_sq-spotting` (CAS(ME)^2, 22 subjects, 30 fps)
and `samm-lv-spotting` (SAMM Long Videos, 30 subjects, 200 fps). Spotting has no class
list or label map, so these live here rather than in protocols/*.yaml.
"""

from __future__ import annotations

import itertools
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from microfer.errors import AnnotationError, MicroferError
from microfer.spotting.spot import (
    MotionSignal,
    PeakSettings,
    SignalSettings,
    SpottedInterval,
    motion_signal,
    spot_curves,
    spot_intervals,
)

IOU_MIN = 0.5
TYPES = ("micro", "macro")


@dataclass(frozen=True)
class SpotProtocol:
    name: str
    dataset: str  # registry name of the adapter
    coding_patterns: tuple[str, ...]  # where the coding file is looked for under --root
    description: str


PROTOCOLS = {
    "casme_sq-spotting": SpotProtocol(
        "casme_sq-spotting",
        "casme_sq",
        ("CAS(ME)^2code_final*.csv",),
        "CAS(ME)^2 long videos (30 fps), macro and micro intervals, LOSO",
    ),
    "samm-lv-spotting": SpotProtocol(
        "samm-lv-spotting",
        "samm_lv",
        ("SAMM_LongVideos_V*_Release*.csv", "SAMM_LongVideos*.csv"),
        "SAMM Long Videos (200 fps), macro and micro intervals, LOSO",
    ),
}

# what the folds choose from (the training subjects' pooled overall F1 decides)
THRESHOLDS = tuple(float(t) for t in np.arange(3.0, 40.01, 1.0))
BLINK_RATIOS = (1.0, 1.25, 1.5, 2.0, 1e9)  # 1e9: no blink rejection


def get_protocol(name: str) -> SpotProtocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise MicroferError(
            f"unknown spotting protocol '{name}'; expected one of {', '.join(PROTOCOLS)}"
        ) from None


# ---------------------------------------------------------------- matching and scores


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


def summarize(per_type: dict[str, Counts]) -> dict:
    total = Counts()
    for c in per_type.values():
        total += c
    return {"overall": total.scores(), **{k: per_type[k].scores() for k in TYPES}}


# ---------------------------------------------------------------- the baselines


def threshold_baseline(
    signal: MotionSignal, threshold: float, micro_max_s: float
) -> list[SpottedInterval]:
    """Trivial baseline: every run of frames whose curve is above a fixed threshold is an interval."""
    from microfer.spotting.spot import runs_of

    curve = spot_curves(signal)[0]
    out = []
    for a, b in runs_of(np.nan_to_num(curve, nan=-np.inf) > threshold):
        kind = "micro" if (b - a) / signal.fps <= micro_max_s else "macro"
        apex = a + int(np.argmax(curve[a:b]))
        out.append(
            SpottedInterval(
                int(signal.numbers[a]),
                int(signal.numbers[apex]),
                int(signal.numbers[b - 1]),
                kind,
                float(curve[apex]),
            )
        )
    return out


def spaced_baseline(
    n_frames_first: int,
    n_frames: int,
    fps: float,
    rates: dict[str, float],
    lengths: dict[str, float],
) -> list[SpottedInterval]:
    """Trivial baseline: per type, intervals of the training subjects' mean length, evenly spaced
    at the training subjects' rate (intervals per frame); no look at the video at all."""
    out = []
    for kind in TYPES:
        k = int(round(rates.get(kind, 0.0) * n_frames))
        length = max(1, int(round(lengths.get(kind, fps))))
        for j in range(k):
            centre = n_frames_first + int((j + 0.5) * n_frames / k)
            on = max(n_frames_first, centre - length // 2)
            out.append(SpottedInterval(on, centre, on + length - 1, kind, 0.0))
    return sorted(out, key=lambda iv: iv.onset)


# ---------------------------------------------------------------- the run


@dataclass
class VideoData:
    subject: str
    video: str
    signal: MotionSignal
    truth: pd.DataFrame
    curves: tuple[np.ndarray, np.ndarray, np.ndarray]


def settings_key(settings: SignalSettings) -> str:
    """Short hash of the signal settings: the cache folder of the signals they make."""
    import hashlib
    import json

    return hashlib.sha1(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:12]


def find_coding(root: Path, protocol: SpotProtocol) -> Path:
    for pattern in protocol.coding_patterns:
        found = sorted(Path(root).glob(pattern))
        if found:
            return found[0]
    raise AnnotationError(
        f"{root}: no coding file for {protocol.name} (looked for "
        f"{', '.join(protocol.coding_patterns)}); give it with --coding"
    )


def load_signals(
    root: Path,
    intervals: pd.DataFrame,
    cache: Path,
    settings: SignalSettings,
    progress: bool = True,
) -> tuple[list[VideoData], list[dict]]:
    """The motion signal of every video (computed once, saved under `cache`, reused on a rerun)."""
    from microfer.clip.video import open_frames

    videos, failures = [], []
    groups = list(intervals.groupby(["subject", "video"], sort=True))
    for k, ((subject, video), truth) in enumerate(groups, 1):
        path = cache / (video.replace("/", "__") + ".npz")
        try:
            if path.is_file():
                signal = MotionSignal.load(path)
            else:
                source = open_frames(Path(root) / video)
                signal = motion_signal(
                    source,
                    float(truth["fps"].iloc[0]),
                    settings,
                    progress=progress,
                    desc=f"[{k}/{len(groups)}] {video}",
                )
                signal.save(path)
        except MicroferError as exc:
            failures.append({"video": video, "subject": subject, "reason": str(exc)})
            continue
        videos.append(
            VideoData(subject, video, signal, truth.reset_index(drop=True), spot_curves(signal))
        )
    return videos, failures


def _pooled(videos: Sequence[VideoData], spot) -> dict[str, Counts]:
    per_type = {k: Counts() for k in TYPES}
    for v in videos:
        for kind, c in count_video(spot(v), v.truth).items():
            per_type[kind] += c
    return per_type


def _best(videos: Sequence[VideoData], candidates, spot_with) -> tuple[object, float]:
    """The candidate with the best pooled overall F1 on `videos` (ties: the first)."""
    best, best_f1 = None, -1.0
    for cand in candidates:
        f1 = summarize(_pooled(videos, lambda v: spot_with(v, cand)))["overall"]["f1"]
        if f1 > best_f1 + 1e-12:
            best, best_f1 = cand, f1
    return best, best_f1


CHOSEN = ("threshold", "blink_ratio", "low", "merge", "talk_peaks")
LOWS = (0.1, 0.15, 0.25)
MERGES = (0.2, 0.35, 0.5)
TALK_PEAKS = (0, 4, 6)
ROUNDS = (
    1  # 2 rounds measured: synthetic SAMM-LV overall F1 0.782 against 0.810 (CAS(ME)^2 0.836 both)
)


def choose_peaks(
    train: Sequence[VideoData],
    peaks: PeakSettings = PeakSettings(),
    thresholds: Sequence[float] = THRESHOLDS,
    blink_ratios: Sequence[float] = BLINK_RATIOS,
) -> tuple[PeakSettings, float]:
    """The PeakSettings with the best pooled overall F1 on `train`: threshold and blink ratio on a
    grid, then (with those) where onsets/offsets fall (`low`), when peaks merge (`merge`) and
    how many mouth peaks make talking (`talk_peaks`); the two steps ROUNDS times (a second
    round, so the first choice does not hang on the second group's defaults, did worse)."""

    def spot(v, p):
        return spot_intervals(v.signal, p, curves=v.curves)

    chosen, f1 = peaks, -1.0
    for _ in range(ROUNDS):  # coordinate ascent: each group is chosen given the other's last choice
        grid = [
            replace(chosen, threshold=t, blink_ratio=b)
            for t, b in itertools.product(thresholds, blink_ratios)
        ]
        chosen, _ = _best(train, grid, spot)
        grid = [
            replace(chosen, low=lo, merge=m, talk_peaks=k)
            for lo, m, k in itertools.product(LOWS, MERGES, TALK_PEAKS)
        ]
        chosen, f1 = _best(train, grid, spot)
    return chosen, f1


def evaluate_loso(
    videos: Sequence[VideoData],
    peaks: PeakSettings = PeakSettings(),
    thresholds: Sequence[float] = THRESHOLDS,
    blink_ratios: Sequence[float] = BLINK_RATIOS,
    choose=None,
) -> dict:
    """Leave-one-subject-out: the parameters of the method and of the baselines are chosen on the
    training subjects of each fold, then the held-out subject's videos are spotted.

    `choose(train_videos) -> PeakSettings` replaces the built-in choice (tests use it to prove
    that the test subject is never seen). Returns per-method pooled scores, per-fold choices and
    every spotted interval.
    """
    subjects = sorted({v.subject for v in videos})
    if len(subjects) < 2:
        raise MicroferError(
            f"leave-one-subject-out needs at least 2 subjects with videos, got {len(subjects)}"
        )
    methods = ("spot", "threshold_baseline", "spaced_baseline")
    pooled = {m: {k: Counts() for k in TYPES} for m in methods}
    folds, spotted = [], []
    for subject in subjects:
        train = [v for v in videos if v.subject != subject]
        test = [v for v in videos if v.subject == subject]
        if choose is not None:
            chosen = choose(train)
            train_f1 = None
        else:
            chosen, train_f1 = choose_peaks(train, peaks, thresholds, blink_ratios)
        base_t, base_f1 = _best(
            train, thresholds, lambda v, t: threshold_baseline(v.signal, t, peaks.micro_max_s)
        )
        rates, lengths = _training_rates(train)
        fold = {
            "test_subject": subject,
            "n_train_videos": len(train),
            "n_test_videos": len(test),
            "chosen": {k: getattr(chosen, k) for k in CHOSEN},
            "train_f1": train_f1,
            "threshold_baseline": {"threshold": base_t, "train_f1": base_f1},
            "spaced_baseline": {"rates_per_frame": rates, "lengths": lengths},
        }
        for v in test:
            results = {
                "spot": spot_intervals(v.signal, chosen, curves=v.curves),
                "threshold_baseline": threshold_baseline(v.signal, base_t, peaks.micro_max_s),
                "spaced_baseline": spaced_baseline(
                    int(v.signal.numbers[0]), len(v.signal.numbers), v.signal.fps, rates, lengths
                ),
            }
            for m, ivs in results.items():
                for kind, c in count_video(ivs, v.truth).items():
                    pooled[m][kind] += c
            spotted.append(
                {
                    "subject": subject,
                    "video": v.video,
                    "intervals": [iv.to_dict() for iv in results["spot"]],
                    "face_lost": [list(r) for r in v.signal.lost_ranges()],
                }
            )
        folds.append(fold)
    return {
        "metrics": {m: summarize(pooled[m]) for m in methods},
        "folds": folds,
        "spotted": spotted,
    }


def _training_rates(train: Sequence[VideoData]) -> tuple[dict[str, float], dict[str, float]]:
    frames = sum(len(v.signal.numbers) for v in train)
    truth = (
        pd.concat([v.truth for v in train])
        if train
        else pd.DataFrame(columns=["type", "onset", "offset"])
    )
    rates, lengths = {}, {}
    for kind in TYPES:
        rows = truth[truth["type"] == kind]
        rates[kind] = len(rows) / frames if frames else 0.0
        lengths[kind] = float((rows["offset"] - rows["onset"] + 1).mean()) if len(rows) else 0.0
    return rates, lengths


def spot_then_recognise(
    videos: Sequence[VideoData], spotted: list[dict], root: Path, model: Path, spot_f1: float
) -> dict:
    """STRS: recognise every true-positive micro interval (matched to a true micro interval
    whose `label` the bundle knows) and multiply the spotting F1 by the recognition UF1."""
    from microfer.clip.video import open_frames
    from microfer.metrics import summarize as class_summary
    from microfer.recognise.predict import Predictor
    from microfer.spotting.spot import recognise_micro

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


def run_spot_eval(
    protocol_name: str,
    root: Path,
    out: Path,
    coding: Optional[Path] = None,
    settings: SignalSettings = SignalSettings(),
    progress: bool = True,
    plots: int = 4,
    model: Optional[Path] = None,
) -> dict:
    """The whole `microfer spot-eval`: signals (cached in out/signals), LOSO, report files."""
    from microfer.datasets import get
    from microfer.datasets.long_videos import interval_table
    from microfer.spotting.spot_report import write_spot_report

    protocol = get_protocol(protocol_name)
    root = Path(root)
    if not root.is_dir():
        raise MicroferError(f"dataset root {root} is not a folder")
    coding = Path(coding) if coding is not None else find_coding(root, protocol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = get(protocol.dataset).read(coding)
    intervals = interval_table(manifest)
    start = time.perf_counter()
    cache = Path(out) / "signals" / settings_key(settings)
    videos, failures = load_signals(root, intervals, cache, settings, progress)
    signal_s = time.perf_counter() - start
    if not videos:
        raise MicroferError(
            f"{root}: no video of {coding.name} could be read "
            f"(first problem: {failures[0]['reason'] if failures else 'none listed'})"
        )
    result = evaluate_loso(videos)
    if model is not None:
        result["strs"] = spot_then_recognise(
            videos, result["spotted"], root, Path(model), result["metrics"]["spot"]["overall"]["f1"]
        )
    n_frames = sum(len(v.signal.numbers) for v in videos)
    doc = {
        "protocol": protocol.name,
        "description": protocol.description,
        "root": str(root),
        "coding": str(coding),
        "n_subjects": len({v.subject for v in videos}),
        "n_videos": len(videos),
        "n_frames": n_frames,
        "n_intervals": {k: int((intervals["type"] == k).sum()) for k in TYPES},
        "dropped_rows": manifest.attrs.get("dropped", []),
        "coding_warnings": [str(w.message) for w in caught],
        "failures": failures,
        "iou_min": IOU_MIN,
        "settings": {
            "signal": asdict(settings),
            "peaks": asdict(PeakSettings()),
            "grid": {
                "thresholds": list(THRESHOLDS),
                "blink_ratios": list(BLINK_RATIOS),
                "lows": list(LOWS),
                "merges": list(MERGES),
                "talk_peaks": list(TALK_PEAKS),
            },
        },
        "timings": {"signals_s": round(signal_s, 2)},
        **result,
    }
    write_spot_report(doc, videos, Path(out), plots=plots)
    return doc
