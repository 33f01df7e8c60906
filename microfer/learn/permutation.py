"""Chance level of a LOSO score by permutation: the whole nested procedure on permuted labels.

The majority baseline is not chance for this pipeline: LOSO folds shift the class mix of
every training part, and class-weighted SVMs then spread their guesses over the classes,
so a classifier fed no information at all scores above it (a constant-feature SVM scored
UF1 0.268 on a real 3-class set whose majority baseline is 0.167). The honest chance level
is what the SAME procedure scores when the labels carry no information: each permutation
reruns every outer fold's inner choice of feature set + SVM settings (`microfer.learn.folds.evaluate_folds`,
unchanged) with permuted labels, keeping subjects and folds as they are, and scores its
pooled predictions against the permuted labels.

p-value of the real score, per metric: (1 + #{null >= real}) / (N + 1) (Phipson & Smyth
2010), so it is never 0 and its minimum 1 / (N + 1) says how many permutations a claim
needs (N = 99 for p <= 0.01). Permutations come from one seed (one child generator per
permutation), so the numbers do not depend on n_jobs, and permutation i is the same
whatever N is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from microfer.errors import MicroferError
from microfer.learn.classify import make_svm
from microfer.learn.folds import evaluate_folds, pooled_predictions
from microfer.metrics import score as metric_score

METRICS = ("uf1", "uar")


@dataclass
class PermutationResult:
    """Null distribution of the pooled metrics and the p-value of the real score."""

    n_permutations: int
    seed: int
    strata: Optional[
        list[str]
    ]  # labels were permuted within each of these; None = across all samples
    real: dict[str, float]  # metric -> score with the true labels
    null: dict[str, np.ndarray]  # metric -> one score per permutation, in permutation order
    null_mean: dict[str, float]
    null_p95: dict[str, float]  # 95th percentile: a real score above it is unusual under the null
    p_value: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, rounded like `metrics.summarize` (6 decimals)."""
        return {
            "n_permutations": self.n_permutations,
            "seed": self.seed,
            "strata": self.strata,
            "metrics": {
                m: {
                    "real": round(self.real[m], 6),
                    "null_mean": round(self.null_mean[m], 6),
                    "null_p95": round(self.null_p95[m], 6),
                    "p_value": round(self.p_value[m], 6),
                    "null": [round(float(v), 6) for v in self.null[m]],
                }
                for m in self.null
            },
        }


def check_request(n_permutations, seed) -> None:
    """Raise MicroferError unless n_permutations >= 1 and seed >= 0 are integers (before any long work)."""

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(n_permutations) or n_permutations < 1:
        raise MicroferError(
            f"the permutation test needs at least 1 permutation, got {n_permutations!r}"
        )
    if not is_int(seed) or seed < 0:
        raise MicroferError(f"the permutation seed must be an integer >= 0, got {seed!r}")


def permute_labels(y, strata=None, rng=None) -> np.ndarray:
    """`y` shuffled across all samples, or within each stratum (each keeps its label multiset)."""
    rng = rng if rng is not None else np.random.default_rng()
    y = np.asarray(y)
    if strata is None:
        return y[rng.permutation(y.size)]
    strata = np.asarray(strata).astype(str)
    if strata.shape != y.shape:
        raise MicroferError(
            f"strata has shape {strata.shape}, labels {y.shape}: need one stratum per sample"
        )
    out = y.copy()
    for s in sorted(
        set(strata.tolist())
    ):  # sorted: the draws do not depend on sample order of strata
        idx = np.flatnonzero(strata == s)
        out[idx] = y[idx[rng.permutation(idx.size)]]
    return out


def pooled_scores(y, results: Sequence[Any], n_classes: int) -> dict[str, float]:
    """UF1 and UAR of predictions pooled over folds, against labels `y` (unrounded)."""
    y = np.asarray(y, dtype=np.int64)
    pred, _, fold_of = pooled_predictions(y.size, results)
    tested = fold_of >= 0
    return {m: float(metric_score(y[tested], pred[tested], n_classes, m)) for m in METRICS}


def _null_run(feature_sets, y_perm, groups, folds, n_classes, kwargs) -> dict[str, float]:
    # one permutation per worker: its folds run in sequence (no nested process pools)
    results = evaluate_folds(
        feature_sets, y_perm, groups, folds, n_jobs=1, n_classes=n_classes, progress=False, **kwargs
    )
    return pooled_scores(y_perm, results, n_classes)


# Over ~60 lines by its 15-argument signature and docstring; the body is short.
def permutation_test(
    feature_sets: Mapping[str, np.ndarray],
    y,
    groups,
    folds: Sequence[Any],
    param_grid=None,
    inner_splits: int = 5,
    n_classes: Optional[int] = None,
    scoring: str = "uf1",
    make_estimator: Callable[..., Any] = make_svm,
    n_permutations: int = 100,
    seed: int = 0,
    strata=None,
    n_jobs: int = 1,
    progress: bool = False,
    real: Optional[Mapping[str, float]] = None,
    stack: bool = False,
) -> PermutationResult:
    """Rerun `evaluate_folds` on `n_permutations` label permutations; null scores and p-values.

    Arguments as `microfer.learn.folds.evaluate_folds`, plus: `strata` (one entry per sample, e.g. its dataset)
    to permute within, or None to permute across all samples; `real` ({"uf1", "uar"} of
    the run with the true labels, as `pooled_scores` gives) when the caller already has it,
    else it is computed here. Parallel over permutations (joblib, n_jobs); the results do
    not depend on n_jobs.
    """
    check_request(n_permutations, seed)
    y = np.asarray(y, dtype=np.int64)
    groups = np.asarray(groups).astype(str)
    if groups.shape != y.shape:
        raise MicroferError(
            f"groups has shape {groups.shape}, labels {y.shape}: need one subject per sample"
        )
    k = int(n_classes if n_classes is not None else y.max() + 1)
    folds = list(folds)
    kwargs = {
        "param_grid": param_grid,
        "inner_splits": inner_splits,
        "scoring": scoring,
        "make_estimator": make_estimator,
        "stack": stack,
    }
    if real is None:
        real = pooled_scores(
            y,
            evaluate_folds(feature_sets, y, groups, folds, n_jobs=n_jobs, n_classes=k, **kwargs),
            k,
        )
    missing = [m for m in METRICS if m not in real]
    if missing:
        raise MicroferError(f"the real score lacks metric(s) {missing}; expected {list(METRICS)}")
    null = _null_scores(
        feature_sets, y, groups, folds, k, kwargs, n_permutations, seed, strata, n_jobs, progress
    )
    real_ = {m: float(real[m]) for m in METRICS}
    return PermutationResult(
        n_permutations=int(n_permutations),
        seed=int(seed),
        strata=None if strata is None else sorted(set(np.asarray(strata).astype(str).tolist())),
        real=real_,
        null=null,
        null_mean={m: float(v.mean()) for m, v in null.items()},
        null_p95={m: float(np.percentile(v, 95)) for m, v in null.items()},
        p_value={
            m: float((1 + np.count_nonzero(v >= real_[m])) / (v.size + 1)) for m, v in null.items()
        },
    )


def _null_scores(
    feature_sets, y, groups, folds, k, kwargs, n_permutations, seed, strata, n_jobs, progress
) -> dict[str, np.ndarray]:
    """Metric -> its score on each label permutation (in permutation order)."""
    from joblib import Parallel, delayed

    # drawn here, in order, from one child generator each: independent of n_jobs and of N
    rngs = [
        np.random.default_rng(s)
        for s in np.random.SeedSequence(int(seed)).spawn(int(n_permutations))
    ]
    perms = [permute_labels(y, strata, rng) for rng in rngs]
    tasks = (delayed(_null_run)(feature_sets, yp, groups, folds, k, kwargs) for yp in perms)
    runs = Parallel(n_jobs=n_jobs, return_as="generator")(tasks)
    if progress:
        from tqdm import tqdm

        runs = tqdm(
            runs, total=len(perms), desc="permutations", unit="perm", leave=False, disable=None
        )
    runs = list(runs)
    return {m: np.array([r[m] for r in runs], dtype=np.float64) for m in METRICS}
