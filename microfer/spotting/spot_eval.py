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

from microfer.datasets import get
from microfer.datasets.long_videos import interval_table
from microfer.errors import AnnotationError, MicroferError
from microfer.spotting.intervals import apply_rules, measured_peaks
from microfer.spotting.peak_scorer import ScorerChoice, fit_scorer
from microfer.spotting.spot import PeakSettings, SignalSettings, spot_intervals
from microfer.spotting.spot_baselines import spaced_baseline, threshold_baseline
from microfer.spotting.spot_report import write_spot_report
from microfer.spotting.spot_scores import (
    IOU_MIN,
    TYPES,
    Counts,
    count_video,
    pooled_counts,
    summarize,
)
from microfer.spotting.spot_scores import iou as iou  # re-exported: callers import it from here
from microfer.spotting.spot_scores import match as match  # re-exported
from microfer.spotting.strs import spot_then_recognise
from microfer.spotting.video_signals import VideoData, load_signals, settings_key


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

# the method whose intervals spot-eval lists and STRS recognises: the rules' settings, then
# the peak scorer where its out-of-fold training F1 beats the rules' training F1, both chosen
# in-fold (peak_scorer.py; "spot" = the rules alone)
HEADLINE = "scored"
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


# ---------------------------------------------------------------- the run


# ---------------------------------------------------------------- the run


def find_coding(root: Path, protocol: SpotProtocol) -> Path:
    for pattern in protocol.coding_patterns:
        found = sorted(Path(root).glob(pattern))
        if found:
            return found[0]
    raise AnnotationError(
        f"{root}: no coding file for {protocol.name} (looked for "
        f"{', '.join(protocol.coding_patterns)}); give it with --coding"
    )


def _pooled(videos: Sequence[VideoData], spot) -> dict[str, Counts]:
    return pooled_counts((spot(v), v.truth) for v in videos)


def _best(videos: Sequence[VideoData], candidates, spot_with) -> tuple[object, float]:
    """The candidate with the best pooled overall F1 on `videos` (ties: the first)."""
    best, best_f1 = None, -1.0
    for cand in candidates:
        f1 = summarize(_pooled(videos, lambda v: spot_with(v, cand)))["overall"]["f1"]
        if f1 > best_f1 + 1e-12:
            best, best_f1 = cand, f1
    return best, best_f1


CHOSEN = ("threshold", "blink_ratio", "micro_threshold", "low", "merge", "talk_peaks")
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
    """The PeakSettings with the best pooled overall F1 on `train`: threshold and blink ratio on
    a grid, then the height of micro-length peaks, then (with those) where
    onsets/offsets fall (`low`), when peaks merge (`merge`) and how many mouth peaks make
    talking (`talk_peaks`); the steps ROUNDS times (a second round, so the first choice does
    not hang on the second group's defaults, did worse)."""

    def spot(v, p):
        return spot_intervals(v.signal, p, curves=v.curves)

    chosen, f1 = peaks, -1.0
    for _ in range(ROUNDS):  # coordinate ascent: each group is chosen given the other's last choice
        grid = [
            replace(chosen, threshold=t, blink_ratio=b)
            for t, b in itertools.product(thresholds, blink_ratios)
        ]
        chosen, _ = _best(train, grid, _PeaksByThreshold().spot)
        # micro-length peaks may need another height (None first: ties keep one threshold)
        grid = [replace(chosen, micro_threshold=t) for t in (None, *thresholds)]
        chosen, _ = _best(train, grid, spot)
        grid = [
            replace(chosen, low=lo, merge=m, talk_peaks=k)
            for lo, m, k in itertools.product(LOWS, MERGES, TALK_PEAKS)
        ]
        chosen, f1 = _best(train, grid, spot)
    return chosen, f1


class _PeaksByThreshold:
    """`spot_intervals` for a grid that varies only the rules within each threshold (in
    threshold order): a video's peaks are measured once per threshold, not once per rule."""

    def __init__(self):
        self.threshold: Optional[float] = None
        self.found: dict[int, list] = {}

    def spot(self, v: VideoData, p: PeakSettings) -> list:
        if p.threshold != self.threshold:  # (micro_threshold is not varied by this grid)
            self.threshold, self.found = p.threshold, {}
        if id(v) not in self.found:
            self.found[id(v)] = measured_peaks(v.signal, p, curves=v.curves)
        return apply_rules(v.signal, self.found[id(v)], p)


@dataclass
class _FoldChoice:
    """What one fold chose on its training subjects, for the method and the baselines."""

    chosen: PeakSettings
    train_f1: Optional[float]
    base_threshold: float
    base_f1: float
    rates: dict[str, float]
    lengths: dict[str, float]
    scorer: Optional[ScorerChoice] = None

    @property
    def use_scorer(self) -> bool:
        """The scorer replaces the rules where it scored higher on the training subjects: its
        F1 is out-of-fold, the rules' in-sample (their settings were chosen on those same
        videos), so a tie or a near miss keeps the rules."""
        return (
            self.scorer is not None
            and self.train_f1 is not None
            and self.scorer.oof_f1 > self.train_f1
        )

    def record(self, subject: str, train: Sequence, test: Sequence) -> dict:
        return {
            "test_subject": subject,
            "n_train_videos": len(train),
            "n_test_videos": len(test),
            "chosen": {k: getattr(self.chosen, k) for k in CHOSEN},
            "train_f1": self.train_f1,
            "scorer": None
            if self.scorer is None
            else {
                "cut": self.scorer.cut,
                "oof_f1": self.scorer.oof_f1,
                "used": self.use_scorer,
            },
            "threshold_baseline": {"threshold": self.base_threshold, "train_f1": self.base_f1},
            "spaced_baseline": {"rates_per_frame": self.rates, "lengths": self.lengths},
        }


def _choose_fold(
    train: Sequence[VideoData],
    peaks: PeakSettings,
    thresholds: Sequence[float],
    blink_ratios: Sequence[float],
    choose,
) -> _FoldChoice:
    if choose is not None:
        chosen = choose(train)
        train_f1 = None
    else:
        chosen, train_f1 = choose_peaks(train, peaks, thresholds, blink_ratios)
    base_t, base_f1 = _best(
        train, thresholds, lambda v, t: threshold_baseline(v.signal, t, peaks.micro_max_s)
    )
    rates, lengths = _training_rates(train)
    scorer = fit_scorer(train, chosen) if choose is None else None
    return _FoldChoice(chosen, train_f1, base_t, base_f1, rates, lengths, scorer)


def _spot_test_video(v: VideoData, fold: _FoldChoice, micro_max_s: float) -> dict:
    """Each method's intervals on one held-out video ("scored": the rules where the fold did
    not choose its scorer)."""
    rules = spot_intervals(v.signal, fold.chosen, curves=v.curves)
    return {
        "scored": fold.scorer.spot(v) if fold.use_scorer else rules,
        "spot": rules,
        "threshold_baseline": threshold_baseline(v.signal, fold.base_threshold, micro_max_s),
        "spaced_baseline": spaced_baseline(
            int(v.signal.numbers[0]), len(v.signal.numbers), v.signal.fps, fold.rates, fold.lengths
        ),
    }


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
    methods = ("scored", "spot", "threshold_baseline", "spaced_baseline")
    pooled = {m: {k: Counts() for k in TYPES} for m in methods}
    folds, spotted = [], []
    for subject in subjects:
        train = [v for v in videos if v.subject != subject]
        test = [v for v in videos if v.subject == subject]
        fold = _choose_fold(train, peaks, thresholds, blink_ratios, choose)
        for v in test:
            results = _spot_test_video(v, fold, peaks.micro_max_s)
            for m, ivs in results.items():
                for kind, c in count_video(ivs, v.truth).items():
                    pooled[m][kind] += c
            spotted.append(
                {
                    "subject": subject,
                    "video": v.video,
                    "intervals": [iv.to_dict() for iv in results[HEADLINE]],
                    "face_lost": [list(r) for r in v.signal.lost_ranges()],
                }
            )
        folds.append(fold.record(subject, train, test))
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


def _read_coding(protocol: SpotProtocol, coding: Path) -> tuple[pd.DataFrame, list[str]]:
    """The manifest of the coding file, and the warnings its adapter gave while reading it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = get(protocol.dataset).read(coding)
    return manifest, [str(w.message) for w in caught]


def _settings_doc(settings: SignalSettings) -> dict:
    return {
        "signal": asdict(settings),
        "peaks": asdict(PeakSettings()),
        "grid": {
            "thresholds": list(THRESHOLDS),
            "blink_ratios": list(BLINK_RATIOS),
            "lows": list(LOWS),
            "merges": list(MERGES),
            "talk_peaks": list(TALK_PEAKS),
        },
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
    protocol = get_protocol(protocol_name)
    root = Path(root)
    if not root.is_dir():
        raise MicroferError(f"dataset root {root} is not a folder")
    coding = Path(coding) if coding is not None else find_coding(root, protocol)
    manifest, coding_warnings = _read_coding(protocol, coding)
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
            videos,
            result["spotted"],
            root,
            Path(model),
            result["metrics"][HEADLINE]["overall"]["f1"],
        )
    doc = {
        "protocol": protocol.name,
        "description": protocol.description,
        "root": str(root),
        "coding": str(coding),
        "n_subjects": len({v.subject for v in videos}),
        "n_videos": len(videos),
        "n_frames": sum(len(v.signal.numbers) for v in videos),
        "n_intervals": {k: int((intervals["type"] == k).sum()) for k in TYPES},
        "dropped_rows": manifest.attrs.get("dropped", []),
        "coding_warnings": coding_warnings,
        "failures": failures,
        "iou_min": IOU_MIN,
        "settings": _settings_doc(settings),
        "timings": {"signals_s": round(signal_s, 2)},
        **result,
    }
    write_spot_report(doc, videos, Path(out), plots=plots)
    return doc
