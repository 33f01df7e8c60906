"""MobileViT fine-tuned on micro-expressions INSIDE each LOSO fold (the seed method's step).

The same machinery as the small CNN (`learn.finetune.InFoldNet`: trains on the rows it is
fitted on, cached by recipe + training inputs + labels); only the network differs: a timm
MobileViT trunk with a new linear head, from random init or from the shipped
macro-expression weights (`--weights`, whole trunk). The shipped weights were trained on
APEX faces; here they only initialise a network that then learns the FLOW of the fold's
training subjects (the issue asks for both starts; inner CV, not this module, judges them).

Recipe, FIXED IN ADVANCE: the 28x28 flow resized (bilinear) to `input_size`; AdamW lr 1e-3,
weight decay 0.01, batch 32, `epochs` passes, final weights; mirror augmentation (image
flipped, u negated) with probability 1/2 per sample; test-time mirroring. Written as
`mobilevit_xxs/flow/finetune` (random init) and `mobilevit_xxs/flow/finetune/pre` (macro
weights): one seed. `finetune_x3` (any N) is a seed ensemble of N members (seeds 0..N-1,
the same head and trunk start, different head init, sample order and mirror draws),
softmax averaged, as the small CNN's: one member costs a whole MobileViT training, so the
ensemble costs N. It is the slow candidate: `--grid full` only (README: measured cost per
fold).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from microfer.clip.representation import flip_input
from microfer.errors import MicroferError
from microfer.learn.finetune import FINETUNE_VERSION
from microfer.models.mobilevit import create_mobilevit
from microfer.models.weights import load_block_weights, read_block_meta


@dataclass(frozen=True)
class ViTRecipe:
    variant: str = "mobilevit_xxs"
    representation: str = "flow"
    block_weights: Optional[str] = None  # None = random init
    input_size: int = 64
    epochs: int = 15
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 32
    seed: int = 0
    members: int = 1  # seeds seed .. seed + members - 1, probabilities averaged
    mirror: bool = True
    tta: bool = True

    is_descriptor = False
    is_learned = True

    @property
    def name(self) -> str:
        step = "finetune" if self.members == 1 else f"finetune_x{self.members}"
        base = f"{self.variant}/{self.representation}/{step}"
        return f"{base}/pre" if self.block_weights else base

    @property
    def parts(self) -> tuple["ViTRecipe", ...]:
        return (self,)

    @property
    def representations(self) -> tuple[str, ...]:
        return (self.representation,)

    def key(self) -> str:
        doc = {**asdict(self), "finetune_version": FINETUNE_VERSION}
        if self.members == 1:  # one seed keeps the key (and the cached trainings) it had
            del doc["members"]
        if self.block_weights:  # content, not path, decides
            doc["block_weights"] = read_block_meta(self.block_weights).get("weights_sha256")
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def network_inputs(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(inputs, np.float32)  # resized inside the network (keeps the cache small)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.members))

    def build(self, n_classes: int):
        from torch import nn

        nets = [self._build_member(n_classes, seed) for seed in self.seeds]
        # one member is the module itself: its state dict keeps the one-seed cache's keys
        return nets[0] if len(nets) == 1 else nn.ModuleList(nets)

    def _build_member(self, n_classes: int, seed: int):
        import torch
        from torch import nn

        trunk = create_mobilevit(self.variant, seed=seed)
        if self.block_weights:
            load_block_weights(trunk, self.block_weights, self.variant)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = nn.Linear(trunk.num_features, n_classes)
        size = (self.input_size, self.input_size)
        # the 28x28 flow is resized inside the network: the cache keeps the small inputs
        return nn.Sequential(nn.Upsample(size=size, mode="bilinear"), trunk, head)

    def train(self, x: np.ndarray, y: np.ndarray, n_classes: int):
        from torch import nn

        nets = [self._train_member(x, y, n_classes, seed) for seed in self.seeds]
        return nets[0] if len(nets) == 1 else nn.ModuleList(nets).eval()

    def _train_member(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int):
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(1)
        net = self._build_member(n_classes, seed)
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        xm = torch.from_numpy(flip_input(x, "flow"))
        yt = torch.from_numpy(np.asarray(y, np.int64))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net.train()
            for _ in range(self.epochs):
                order = rng.permutation(len(x))
                flip = torch.from_numpy(rng.random(len(x)) < 0.5)[:, None, None, None]
                xb_all = torch.where(flip, xm, xt) if self.mirror else xt
                for start in range(0, len(x), self.batch_size):
                    idx = torch.from_numpy(order[start : start + self.batch_size])
                    if idx.numel() < 2:
                        continue  # BatchNorm cannot train on one sample
                    loss = F.cross_entropy(net(xb_all[idx]), yt[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        return net.eval()

    def proba(self, net, x: np.ndarray) -> np.ndarray:
        import torch

        views = [x, flip_input(x, "flow")] if self.tta else [x]
        members = list(net) if isinstance(net, torch.nn.ModuleList) else [net]
        out = []
        with torch.no_grad():
            for member in members:
                for v in views:
                    t = torch.from_numpy(np.ascontiguousarray(v, np.float32))
                    out.append(
                        np.concatenate([torch.softmax(member(b), -1).numpy() for b in t.split(64)])
                    )
        return np.mean(out, axis=0)


_STEP = re.compile(r"finetune(?:_x([1-9][0-9]?))?")


def is_finetune_step(field: str) -> bool:
    return _STEP.fullmatch(field) is not None


def recipe_from_name(text: str, fields: list[str], weights: Optional[str]):
    """'variant/flow/finetune[_xN]' (random init) or '.../finetune[_xN]/pre' (the --weights)."""
    pre = len(fields) == 4
    step = _STEP.fullmatch(fields[2]) if len(fields) > 2 else None
    if fields[1] != "flow" or step is None or (pre and fields[3] != "pre"):
        raise MicroferError(
            f"feature set {text!r}: a fine-tuned network is written 'variant/flow/finetune' "
            f"or 'variant/flow/finetune/pre' ('finetune_x3': a 3-seed ensemble)"
        )
    # without weights (--weights none) "pre" keeps the random init and says so in its name,
    # as every network candidate does
    return ViTRecipe(
        variant=fields[0],
        block_weights=str(weights) if pre and weights else None,
        members=int(step.group(1) or 1),
    )
