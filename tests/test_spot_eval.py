"""MEGC spotting evaluation: IoU, one-to-one matching, P/R/F1 by hand, and folds that never
choose a parameter on the held-out subject."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from microfer.spotting.spot import (
    SPOT_REGIONS,
    MotionSignal,
    PeakSettings,
    SpottedInterval,
    spot_curves,
    spot_intervals,
)
from microfer.spotting.spot_eval import (
    Counts,
    VideoData,
    count_video,
    evaluate_loso,
    iou,
    match,
    summarize,
)


def test_iou_hand_worked():
    assert iou((10, 19), (10, 19)) == 1.0
    assert iou((10, 19), (15, 24)) == pytest.approx(5 / 15)  # overlap 15..19, union 10..24
    assert iou((0, 9), (5, 14)) == pytest.approx(5 / 15)
    assert iou((0, 9), (10, 19)) == 0.0  # touching, no shared frame
    assert iou((0, 99), (20, 69)) == pytest.approx(50 / 100)  # inside: exactly the 0.5 limit
    assert iou((5, 5), (5, 5)) == 1.0


def test_match_is_one_to_one_best_first():
    truth = [(100, 129), (200, 209)]
    spotted = [(101, 128), (100, 131), (202, 210), (400, 410)]
    # both first spots overlap truth 0; the better one (IoU 30/32 vs 28/30 -> 0.9375 > 0.933) wins
    assert iou(spotted[1], truth[0]) > iou(spotted[0], truth[0])
    assert match(spotted, truth) == [(1, 0), (2, 1)]
    assert match([(100, 104)], [(100, 119)]) == []  # IoU 0.25 < 0.5


def test_counts_and_f1_hand_worked():
    truth = pd.DataFrame(
        {"onset": [10, 50, 100], "offset": [18, 90, 160], "type": ["micro", "macro", "macro"]}
    )
    spotted = [
        SpottedInterval(11, 14, 18, "micro", 9.0),  # TP micro
        SpottedInterval(52, 70, 88, "macro", 20.0),  # TP macro
        SpottedInterval(100, 120, 115, "macro", 8.0),  # IoU 16/61: FP
        SpottedInterval(300, 303, 306, "micro", 7.0),  # FP micro
        SpottedInterval(52, 60, 90, "micro", 7.0),
    ]  # right place, wrong type: FP micro
    counts = count_video(spotted, truth)
    assert (counts["micro"].tp, counts["micro"].spotted, counts["micro"].truth) == (1, 3, 1)
    assert (counts["macro"].tp, counts["macro"].spotted, counts["macro"].truth) == (1, 2, 2)
    s = summarize(counts)
    # overall: TP 2 of 5 spotted, 3 true -> P 0.4, R 2/3, F1 = 2*0.4*0.667/(1.067) = 0.5
    assert s["overall"]["precision"] == pytest.approx(0.4)
    assert s["overall"]["recall"] == pytest.approx(2 / 3)
    assert s["overall"]["f1"] == pytest.approx(0.5)
    assert s["micro"]["f1"] == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert s["macro"] == {"tp": 1, "fp": 1, "fn": 1, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert Counts().scores()["f1"] == 0.0


def _fake_video(
    subject: str, seed: int, height: float, n: int = 900, fps: float = 30.0
) -> VideoData:
    """A measured signal with expressions of a known height at known frames (no face needed):
    micro (10 frames) and macro (40) in turn, every 120 frames."""
    events = [
        (onset, 10, height, "micro") if k % 2 == 0 else (onset, 40, height, "macro")
        for k, onset in enumerate(range(60, n - 60, 120))
    ]
    return _events_video(subject, seed, events, n, fps)


def test_folds_choose_on_training_subjects_only():
    videos = [_fake_video(f"s{k}", k, height) for k, height in enumerate([20, 25, 30, 35])]
    seen = []

    def choose(train):
        seen.append({v.subject for v in train})
        from microfer.spotting.spot import PeakSettings

        return PeakSettings(threshold=10.0)

    result = evaluate_loso(videos, choose=choose)
    assert [f["test_subject"] for f in result["folds"]] == ["s0", "s1", "s2", "s3"]
    for fold, train_subjects in zip(result["folds"], seen):
        assert fold["test_subject"] not in train_subjects and len(train_subjects) == 3
    assert result["metrics"]["spot"]["overall"]["f1"] > 0.9  # the fake expressions are found


def test_built_in_choice_ignores_the_test_subject():
    videos = [_fake_video(f"s{k}", k, height) for k, height in enumerate([20, 25, 30, 35])]
    base = evaluate_loso(videos)
    # the held-out subject's truth and signal changed beyond recognition: its fold chooses the same
    tampered = list(videos)
    v = videos[0]
    wild = MotionSignal(
        numbers=v.signal.numbers,
        fps=v.signal.fps,
        regions=v.signal.regions * 5.0 + 3.0,
        head=v.signal.head,
        eye_px=v.signal.eye_px,
    )
    tampered[0] = VideoData(v.subject, v.video, wild, v.truth.iloc[:1], spot_curves(wild))
    again = evaluate_loso(tampered)
    assert again["folds"][0]["chosen"] == base["folds"][0]["chosen"]
    assert again["folds"][0]["threshold_baseline"] == base["folds"][0]["threshold_baseline"]
    # ... while the other folds, which train on it, may change: the choice does depend on the training data
    assert again["folds"][0]["train_f1"] == base["folds"][0]["train_f1"]
    assert again["folds"][0]["scorer"] == base["folds"][0]["scorer"] is not None


def test_loso_needs_two_subjects():
    from microfer.errors import MicroferError

    with pytest.raises(MicroferError, match="at least 2 subjects"):
        evaluate_loso([_fake_video("s0", 0, 20)])


def _events_video(
    subject: str, seed: int, events: list, n: int = 1200, fps: float = 30.0
) -> VideoData:
    """A measured signal from (onset, length in frames, height, truth type or None[, region])
    events: a None type is motion that is no expression (talking, say); region 0 unless given."""
    rng = np.random.default_rng(seed)
    regions = (1.0 + 0.1 * rng.standard_normal((n, len(SPOT_REGIONS)))).astype(np.float32)
    rows = []
    for onset, length, height, kind, *where in events:
        t = np.arange(length + 1)
        bump = 0.1 * height * 0.5 * (1 - np.cos(2 * np.pi * t / length))
        regions[onset : onset + length + 1, where[0] if where else 0] += bump.astype(np.float32)
        if kind:
            rows.append({"onset": onset + 1, "offset": onset + length + 1, "type": kind})
    signal = MotionSignal(
        numbers=np.arange(1, n + 1),
        fps=fps,
        regions=regions,
        head=np.zeros((n, 3), np.float32),
        eye_px=np.full(n, 50, np.float32),
    )
    return VideoData(subject, f"{subject}/v", signal, pd.DataFrame(rows), spot_curves(signal))


# four macro-expressions, one small micro-expression, and four macro-length movements that are
# no expression, higher than the micro one (frames, heights)
EVENTS = [
    (60, 40, 40, "macro"),
    (180, 40, 25, None),
    (300, 40, 40, "macro"),
    (420, 10, 12, "micro"),
    (540, 40, 25, None),
    (660, 40, 40, "macro"),
    (780, 40, 25, None),
    (900, 40, 40, "macro"),
    (1020, 40, 25, None),
]


def test_micro_length_peaks_have_their_own_threshold():
    v = _events_video("s0", 0, EVENTS)
    kinds = lambda p: [iv.type for iv in spot_intervals(v.signal, p, curves=v.curves)]  # noqa: E731
    assert kinds(PeakSettings(threshold=25.0)) == ["macro"] * 4
    assert (
        kinds(PeakSettings(threshold=25.0, micro_threshold=5.0))
        == ["macro"] * 2 + ["micro"] + ["macro"] * 2
    )
    # with one low threshold the movements come too; a micro threshold above every peak
    # removes the micro one only
    assert kinds(PeakSettings(threshold=5.0)).count("macro") == 8
    assert "micro" not in kinds(PeakSettings(threshold=5.0, micro_threshold=1e6))


def test_folds_choose_a_lower_micro_threshold_for_small_micro_expressions():
    videos = [_events_video(f"s{k}", k, EVENTS) for k in range(4)]
    result = evaluate_loso(videos)
    for fold in result["folds"]:
        assert fold["chosen"]["micro_threshold"] < fold["chosen"]["threshold"]
    assert result["metrics"]["spot"]["overall"]["f1"] == 1.0
    # the rules are perfect on the training subjects: no fold trades them for the scorer
    assert not any(f["scorer"]["used"] for f in result["folds"])
    assert result["metrics"]["scored"] == result["metrics"]["spot"]


def test_rules_on_measured_peaks_equal_a_fresh_spot():
    # spot-eval measures a video's peaks once per threshold and applies each rule setting to
    # them; that must give what spot_intervals gives for the same settings
    from microfer.spotting.spot_eval import _PeaksByThreshold

    v = _fake_video("s0", 3, 30)
    cached = _PeaksByThreshold()
    for threshold in (5.0, 12.0):
        for blink in (1.0, 1e9):
            p = PeakSettings(threshold=threshold, blink_ratio=blink)
            fresh = spot_intervals(v.signal, p, curves=v.curves)
            assert cached.spot(v, p) == fresh


def _iv(onset, offset, kind, score):
    return SpottedInterval(onset, (onset + offset) // 2, offset, kind, score)


def test_micro_tails_of_a_stronger_macro_expression_are_dropped():
    from microfer.spotting.rules import without_tails

    macro = _iv(100, 160, "macro", 30.0)
    after = _iv(170, 180, "micro", 10.0)  # starts 10 frames (0.33 s at 30 fps) after it ends
    before = _iv(80, 95, "micro", 10.0)  # ends 5 frames before it starts
    far = _iv(200, 210, "micro", 10.0)  # 40 frames (1.3 s) later: an expression of its own
    stronger = _iv(165, 175, "micro", 40.0)  # higher than the macro one: not its tail
    dropped = []
    kept = without_tails([before, macro, stronger, after, far], 30.0, 0.5, dropped)
    assert kept == [macro, stronger, far]
    assert [iv for iv, _ in dropped] == [before, after]
    assert without_tails([before, macro, after], 30.0, 0.0, []) == [before, macro, after]


# expressions move the brows (region 0); movements that are no expression move the mouth
# (region 3) and rise HIGHER, at the same lengths: no height separates them, where they are does
WHERE_EVENTS = [
    (60, 40, 20, "macro"),
    (180, 40, 30, None, 3),
    (300, 10, 14, "micro"),
    (420, 10, 22, None, 3),
    (540, 40, 24, "macro"),
    (660, 10, 12, "micro"),
    (780, 40, 28, None, 3),
    (900, 10, 20, None, 3),
    (1020, 10, 16, "micro"),
]


def test_peak_scorer_learns_in_fold_what_no_height_separates():
    videos = [_events_video(f"s{k}", k, WHERE_EVENTS) for k in range(4)]
    result = evaluate_loso(videos)
    rules, scored = (result["metrics"][m]["overall"]["f1"] for m in ("spot", "scored"))
    assert rules < 0.75 and scored >= 0.9
    assert all(f["scorer"]["used"] for f in result["folds"])  # it won on the training subjects
    # what spot-eval lists (and STRS recognises) is the scored method's intervals
    listed = sum(len(v["intervals"]) for v in result["spotted"])
    assert (
        listed
        == result["metrics"]["scored"]["overall"]["tp"]
        + result["metrics"]["scored"]["overall"]["fp"]
    )


def test_peak_labels_match_a_true_interval_of_their_own_type():
    from microfer.spotting.intervals import MeasuredPeak
    from microfer.spotting.peak_scorer import peak_labels

    truth = pd.DataFrame([{"onset": 100, "offset": 110, "type": "micro"}])
    peaks = [
        MeasuredPeak(_iv(101, 110, "micro", 9.0), 0.0, 0.0, 9.0, np.zeros(3)),  # IoU 10/11
        MeasuredPeak(_iv(101, 110, "macro", 9.0), 0.0, 0.0, 9.0, np.zeros(3)),  # wrong type
        MeasuredPeak(_iv(106, 125, "micro", 9.0), 0.0, 0.0, 9.0, np.zeros(3)),  # IoU 5/26
    ]
    assert peak_labels(peaks, truth).tolist() == [1, 0, 0]


def test_out_of_fold_probabilities_never_see_their_own_subject():
    from microfer.spotting.peak_scorer import _training_peaks, out_of_fold

    videos = [_events_video(f"s{k}", k, WHERE_EVENTS) for k in range(4)]
    items = [_training_peaks(v, PeakSettings()) for v in videos]
    subjects = [v.subject for v in videos]
    base = out_of_fold(items, subjects)
    items[0].y = 1 - items[0].y  # s0's labels reversed
    again = out_of_fold(items, subjects)
    np.testing.assert_array_equal(again[0], base[0])  # s0's probabilities: from s1-s3 only
    assert not np.allclose(again[1], base[1])  # s1's model trained on s0: it changed


def test_peak_scorer_with_one_label_gives_that_label_in_sklearn_shape():
    from microfer.spotting.peak_scorer import PeakScorer

    X = np.random.default_rng(0).normal(size=(5, 3))
    none = PeakScorer().fit(X, np.zeros(5)).predict_proba(X)
    assert none.shape == (5, 2) and (none[:, 1] == 0).all() and (none.sum(axis=1) == 1).all()
    both = PeakScorer().fit(X, np.array([0, 1, 0, 1, 1])).predict_proba(X)
    assert both.shape == (5, 2) and np.allclose(both.sum(axis=1), 1)
