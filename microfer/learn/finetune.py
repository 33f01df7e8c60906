"""Networks trained on micro-expressions INSIDE each LOSO fold (the small-CNN family).

A learned candidate sits in the same in-fold grid as the descriptors
(`classify.select_and_fit`): its "feature matrix" is the column of sample indices
(`classify.LearnedFeatures`), and its estimator, `InFoldNet`, trains on exactly the rows
it is fitted on -- the inner folds' training subjects while the grid is scored, the
outer fold's training subjects for the final fit. The held-out subject is only predicted.

The recipe is FIXED IN ADVANCE (not tuned on these data, not chosen per fold):
    seed ensemble      5 members (seeds 0-4), probabilities averaged
    optimiser          Adam, lr 3e-3, no weight decay, full batch (every training
                       sample in each step), 80 epochs, final weights (no early
                       stopping: that would need a validation subject)
    mirror             each epoch every sample is mirrored with probability 1/2 (the
                       image flipped left-right AND u negated: a face moving left,
                       mirrored, moves right); the prediction averages the clip and its
                       mirror (test-time mirroring)
    inputs             the flow representation (u, v, strain; fixed [-1, 1] map for the
                       circulated min-max images), area-averaged to the network's size
STSTNet's published recipe (Adam 5e-5, 500 epochs, batch 256) needs ~10x the steps: more
than 2 shared CPU cores give every fold. One thread, seeded generators: the same rows and
recipe give the same network, whatever `--jobs` is.

Trained ensembles are cached (safetensors + JSON) under a key of the recipe, the bytes
of the training inputs and their labels, so a rerun re-chooses without retraining, and a
changed input or label retrains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from microfer.clip.representation import flip_input
from microfer.errors import MicroferError
from microfer.io import atomic_path, write_json
from microfer.learn.features import FeatureSetting
from microfer.models.smallcnn import build_ensemble, spec_of

FINETUNE_VERSION = 1


@dataclass(frozen=True)
class CNNRecipe:
    """One learned candidate of the grid ("ststnet14/flow") and how it is trained."""

    variant: str = "ststnet14"
    representation: str = "flow"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 80
    lr: float = 3e-3
    weight_decay: float = 0.0
    mirror: bool = True
    tta: bool = True

    is_descriptor = False
    is_learned = True

    @property
    def name(self) -> str:
        return f"{self.variant}/{self.representation}"

    @property
    def parts(self) -> tuple["CNNRecipe", ...]:
        return (self,)

    @property
    def representations(self) -> tuple[str, ...]:
        return (self.representation,)

    def key(self) -> str:
        doc = {**asdict(self), "finetune_version": FINETUNE_VERSION}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    # what `InFoldNet` asks of a recipe (learn.finetune_vit's recipe answers the same)
    def network_inputs(self, inputs: np.ndarray) -> np.ndarray:

        return to_network_size(inputs, spec_of(self.variant).input_size)

    def train(self, x: np.ndarray, y: np.ndarray, n_classes: int):
        return train_ensemble(self, x, y, n_classes)

    def build(self, n_classes: int):

        return build_ensemble(self.variant, n_classes, self.seeds)

    def proba(self, net, x: np.ndarray) -> np.ndarray:
        return ensemble_proba(net, x, self.tta)


def to_network_size(inputs: np.ndarray, size: int) -> np.ndarray:
    """(N, 3, S, S) -> (N, 3, size, size) by area averaging (S a multiple of size)."""
    x = np.asarray(inputs, np.float32)
    n, c, h, w = x.shape
    if h % size or w % size:
        raise MicroferError(f"flow inputs of {h}x{w} do not pool evenly to {size}x{size}")
    return x.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


def training_key(recipe: CNNRecipe, x: np.ndarray, y: np.ndarray, n_classes: int) -> str:
    """Content address of one training: recipe + training inputs + labels."""
    h = hashlib.sha256(recipe.key().encode())
    h.update(np.ascontiguousarray(x, np.float32).tobytes())
    h.update(np.ascontiguousarray(y, np.int64).tobytes())
    h.update(str(int(n_classes)).encode())
    return h.hexdigest()[:24]


def train_ensemble(recipe: CNNRecipe, x: np.ndarray, y: np.ndarray, n_classes: int):
    """Train the recipe's ensemble on (N, 3, S, S) inputs at network size; returns the module."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)  # determinism (and the budget) do not depend on the machine
    net = build_ensemble(recipe.variant, n_classes, recipe.seeds)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    yt = torch.from_numpy(np.asarray(y, np.int64)).repeat_interleave(net.n_members)
    plain = net.patches(xt)
    mirrored = net.patches(torch.from_numpy(flip_input(x, "flow"))) if recipe.mirror else None
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    rng = np.random.default_rng(recipe.seeds[0])
    # dropout draws from torch's global generator: fork it, so the caller's RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seeds[0])
        net.train()
        for _ in range(recipe.epochs):
            p = plain
            if mirrored is not None:
                flip = torch.from_numpy(rng.random(len(x)) < 0.5)[:, None, None]
                p = torch.where(flip, mirrored, plain)
            logits = net.forward_patches(p)
            loss = F.cross_entropy(logits.reshape(-1, n_classes), yt) * net.n_members
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def ensemble_proba(net, x: np.ndarray, tta: bool) -> np.ndarray:
    """Mean softmax over members (and over the clip and its mirror with `tta`): (N, classes)."""
    import torch

    views = [x, flip_input(x, "flow")] if tta else [x]
    with torch.no_grad():
        probs = [
            torch.softmax(net(torch.from_numpy(np.ascontiguousarray(v, np.float32))), -1)
            .mean(1)
            .numpy()
            for v in views
        ]
    return np.mean(probs, axis=0)


class InFoldNet:
    """scikit-learn-style estimator on index rows: fit(X, y) trains on inputs[X[:, 0]].

    `inputs` holds the flow inputs of ALL samples (N, 3, 28, 28); the estimator only
    ever reads the rows it is given. `fitted_rows_` records them (tests check that no
    row of the held-out subject is ever trained on).
    """

    def __init__(
        self,
        recipe,
        inputs: np.ndarray,
        n_classes: int,
        cache_dir: Optional[str] = None,
        **_svm_params: Any,
    ):
        self.recipe, self.inputs, self.n_classes = recipe, inputs, int(n_classes)
        self.cache_dir = cache_dir

    def _rows(self, X) -> np.ndarray:
        return np.asarray(X)[:, 0].astype(np.int64)

    def _x(self, rows: np.ndarray) -> np.ndarray:
        return self.recipe.network_inputs(self.inputs[rows])

    def fit(self, X, y):
        rows = self._rows(X)
        self.fitted_rows_ = rows
        x, y = self._x(rows), np.asarray(y, np.int64)
        key = training_key(self.recipe, x, y, self.n_classes)
        self.net_ = self._load(key)
        if self.net_ is None:
            self.net_ = self.recipe.train(x, y, self.n_classes)
            self._save(key, rows)
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.recipe.proba(self.net_, self._x(self._rows(X)))

    def predict(self, X) -> np.ndarray:
        return np.argmax(self.predict_proba(X), axis=1)

    # ------------------------------------------------------------------ cache
    def _paths(self, key: str) -> tuple[Path, Path]:
        d = Path(self.cache_dir) / self.recipe.key()
        return d / f"{key}.safetensors", d / f"{key}.json"

    def _load(self, key: str):
        if self.cache_dir is None:
            return None
        weights, meta = self._paths(key)
        if not (weights.is_file() and meta.is_file()):
            return None
        from safetensors.torch import load_file

        net = self.recipe.build(self.n_classes)
        net.load_state_dict(load_file(str(weights)))
        return net.eval()

    def _save(self, key: str, rows: np.ndarray) -> None:
        if self.cache_dir is None:
            return
        from safetensors.torch import save_file

        weights, meta = self._paths(key)
        state = {k: v.detach().contiguous() for k, v in self.net_.state_dict().items()}
        with atomic_path(weights) as tmp:
            save_file(state, str(tmp))
        write_json(
            meta,
            {
                "recipe": {
                    k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.recipe).items()
                },
                "recipe_key": self.recipe.key(),
                "training_key": key,
                "n_classes": self.n_classes,
                "train_rows": rows.tolist(),
                "finetune_version": FINETUNE_VERSION,
            },
        )


def learned_features(recipe, extract, n_classes: int, feature_dir):
    """A small-CNN candidate: the 28x28 flow inputs of every clip, trained on per fold."""
    from functools import partial

    from microfer.learn.classify import LearnedFeatures

    # flow_raw is the flow at 28x28 as the network sees it (the fixed scale of
    # clip.representation), so its cached rows are the CNN's inputs
    raw = FeatureSetting("flow_raw", "flow", "none", "none", 28, 0, None)
    inputs = np.asarray(extract(raw), np.float32).reshape(-1, 3, 28, 28)
    cache_dir = str(Path(feature_dir) / "finetune") if feature_dir else None
    return LearnedFeatures(partial(InFoldNet, recipe, inputs, n_classes, cache_dir), len(inputs))
