"""What a LOSO run (`learn.evaluate.run_loso`) or a training (`learn.train`) is asked to do.

A module of its own, below `grids` and `evaluate`: both read these settings, and the
feature grid is parsed from them before anything is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class LosoSettings:
    grid: str = "small"
    seed: int = 0
    n_jobs: int = 1
    inner_splits: int = 5
    scoring: str = "uf1"
    batch_size: int = 32
    num_threads: Optional[int] = None
    input_size: int = 128
    # "default" = the shipped macro-pretrained weights, None = random init, else a path
    block_weights: Optional[str] = "default"
    feature_dir: Optional[str] = None
    device: str = "cpu"
    # explicit feature sets (FEATURE_GRIDS syntax) instead of the grid's
    features: tuple[str, ...] = ()
    permutations: int = 0  # label permutations for the chance level (0 = none)
    permutation_seed: int = 0
    # where folds and permutations run: None = here (n_jobs processes), "local" = a dask
    # LocalCluster, else a dask scheduler address (microfer.parallel). Not a setting of the
    # result: results.json is the same wherever it ran, so it is left out of it.
    scheduler: Optional[str] = None


RUN_ONLY_SETTINGS = ("scheduler",)  # how a run was executed, not what it computed
