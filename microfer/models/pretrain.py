"""Pretrain the MobileNetV2 block of MobileViT on MACRO-expression data.

Macro-expressions are the same facial movements as micro-expressions, larger and far more
plentiful; a block that learnt to see them gives the frozen extractor better early
filters than random ones. The macro samples are preprocessed EXACTLY like micro samples:
- a prepare cache of macro clips (CAS(ME)^2 macro intervals, or `microfer synth
  --amplitude macro`), labelled by the `emotion` of the manifest rows it was prepared
  from (matched on dataset / subject / clip) -- any input representation;
- and/or an image folder ROOT/<split>/<emotion>/*.png|jpg (FER-2013 layout): still
  faces, so only the "apex" representation.

Model: MV2 block (stem, stages.0, stages.1 of the timm variant; see mobilevit.py) + a
small head (1x1 conv, BN, SiLU, global average pool, dropout, linear). Loss: class-
weighted cross-entropy (macro emotion sets are imbalanced); AdamW with a cosine learning
rate that is a pure function of the epoch; left-right flips as augmentation (flow u
negated). Every epoch uses RNG streams derived from (seed, epoch) only, and the checkpoint
keeps the model AND the AdamW moments, so a resumed run gives the same weights as an
uninterrupted one.

Output folder: mv2_block.safetensors + mv2_block.json (what `microfer loso --weights`
loads), checkpoint.safetensors + checkpoint.json (for --resume).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from microfer._io import atomic_path, write_json
from microfer.errors import MicroferError
from microfer.models.mobilevit import check_variant, create_mobilevit, file_sha256, save_block_weights
from microfer.representation import check_kind, face_to_input, flip_input, to_input

CHECKPOINT_FORMAT = "microfer.pretrain_checkpoint"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
MERGE_KEYS = ["dataset", "subject", "clip"]


def normalise_label(value) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    return text.strip().lower()


# ---------------------------------------------------------------------------- data
@dataclass
class MacroSet:
    """Labelled macro-expression samples, ready for the network.

    Clip-derived samples are stored as network inputs (N1, 3, S, S) float32; image
    samples as uint8 BGR faces (N2, S, S, 3) (4x less memory for large image sets) and
    converted batch by batch. Sample i < N1 is inputs[i], else faces[i - N1].
    """

    representation: str
    input_size: int
    labels: list[str]          # sorted label set; y indexes it
    y: np.ndarray              # (N,) int64
    keys: list[str]
    inputs: np.ndarray         # (N1, 3, S, S) float32
    faces: np.ndarray          # (N2, S, S, 3) uint8
    sources: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def __len__(self) -> int:
        return int(self.y.size)

    def batch(self, idx: np.ndarray) -> np.ndarray:
        n1 = self.inputs.shape[0]
        out = np.empty((len(idx), 3, self.input_size, self.input_size), np.float32)
        for j, i in enumerate(idx):
            out[j] = self.inputs[i] if i < n1 else face_to_input(self.faces[i - n1])
        return out

    def data_hash(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"rep": self.representation, "size": self.input_size, "labels": self.labels,
                             "keys": self.keys, "y": self.y.tolist()}).encode())
        h.update(np.ascontiguousarray(self.inputs).tobytes())
        h.update(np.ascontiguousarray(self.faces).tobytes())
        return h.hexdigest()


def _resize_chw(x: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if x.shape[1:] == (size, size):
        return x
    return cv2.resize(x.transpose(1, 2, 0), (size, size), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)


def load_cache_samples(cache, manifest, representation: str, input_size: int = 128,
                       label_column: str = "emotion", progress: bool = False) -> MacroSet:
    """Macro clips of a prepare cache, labelled from the manifest rows they came from."""
    from microfer.evaluate import open_cache

    check_kind(representation)
    source = open_cache(cache)
    index = source.index()
    if isinstance(manifest, pd.DataFrame):
        man = manifest.copy()
    else:
        from microfer.datasets import read_manifest

        man = read_manifest(Path(manifest))
    if label_column not in man.columns:
        raise MicroferError(f"manifest has no column {label_column!r} to label macro samples "
                            f"(columns: {', '.join(man.columns)})")
    for df in (man, index):
        for c in MERGE_KEYS:
            if c not in df.columns:
                raise MicroferError(f"manifest / cache index lacks column {c!r}")
            df[c] = df[c].astype(str)
    ok = index[index["status"].astype(str) == "ok"].drop_duplicates(MERGE_KEYS, keep="last")
    merged = ok.merge(man[MERGE_KEYS + [label_column]].drop_duplicates(MERGE_KEYS), on=MERGE_KEYS, how="left")
    merged["_label"] = merged[label_column].map(normalise_label)
    skipped = {"failed in the cache": int((index["status"].astype(str) != "ok").sum()),
               "no manifest row / no label": int((merged["_label"] == "").sum())}
    merged = merged[merged["_label"] != ""].sort_values("key").reset_index(drop=True)
    keys = merged["key"].astype(str).tolist()
    arrays = []
    iterator = keys
    if progress:
        from tqdm import tqdm

        iterator = tqdm(keys, desc="loading macro clips", unit="clip", leave=False, disable=None)
    for k in iterator:
        arrays.append(_resize_chw(to_input(source.load(k), representation, k), input_size))
    labels = sorted(set(merged["_label"]))
    y = np.array([labels.index(v) for v in merged["_label"]], np.int64)
    inputs = np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, 3, input_size, input_size), np.float32)
    return MacroSet(representation, input_size, labels, y, keys, inputs,
                    np.zeros((0, input_size, input_size, 3), np.uint8),
                    sources=[f"cache:{getattr(source, 'dir', cache)}"], skipped={k: v for k, v in skipped.items() if v})


def load_image_folder(root, split: str = "train", input_size: int = 128, progress: bool = False) -> MacroSet:
    """Face images ROOT/<split>/<emotion>/*.png|jpg (FER-2013 layout) -> 'apex' samples."""
    import cv2

    base = Path(root) / split
    if not base.is_dir():
        raise MicroferError(f"{base}: image folder not found (expected ROOT/{split}/<emotion>/*.png)")
    files = sorted(p for d in sorted(base.iterdir()) if d.is_dir()
                   for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MicroferError(f"{base}: no images in <emotion>/ sub-folders")
    faces, labels_raw, keys, unreadable = [], [], [], 0
    iterator = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="loading images", unit="img", leave=False, disable=None)
    for p in iterator:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            unreadable += 1
            continue
        faces.append(cv2.resize(img, (input_size, input_size), interpolation=cv2.INTER_AREA))
        labels_raw.append(normalise_label(p.parent.name))
        keys.append(f"images/{p.relative_to(base).as_posix()}")
    labels = sorted(set(labels_raw))
    y = np.array([labels.index(v) for v in labels_raw], np.int64)
    return MacroSet("apex", input_size, labels, y, keys, np.zeros((0, 3, input_size, input_size), np.float32),
                    np.stack(faces) if faces else np.zeros((0, input_size, input_size, 3), np.uint8),
                    sources=[f"images:{base}"], skipped={"unreadable image": unreadable} if unreadable else {})


def combine(sets: Sequence[MacroSet]) -> MacroSet:
    """One MacroSet from several (same representation and size); the label set is the union."""
    sets = [s for s in sets if s is not None]
    if not sets:
        raise MicroferError("no macro-expression data given (pass --cache with --manifest, and/or --images)")
    if len({(s.representation, s.input_size) for s in sets}) != 1:
        raise MicroferError("macro data sources disagree on representation / input size "
                            "(an image folder only provides the 'apex' representation)")
    if len(sets) == 1:
        return sets[0]
    labels = sorted(set().union(*(s.labels for s in sets)))
    # clip-derived inputs first, then images (MacroSet.batch relies on this order)
    ys = [np.array([labels.index(s.labels[i]) for i in s.y[: s.inputs.shape[0]]], np.int64) for s in sets] + \
         [np.array([labels.index(s.labels[i]) for i in s.y[s.inputs.shape[0]:]], np.int64) for s in sets]
    keys = [k for s in sets for k in s.keys[: s.inputs.shape[0]]] + [k for s in sets for k in s.keys[s.inputs.shape[0]:]]
    skipped: dict[str, int] = {}
    for s in sets:
        for k, v in s.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return MacroSet(sets[0].representation, sets[0].input_size, labels, np.concatenate(ys), keys,
                    np.concatenate([s.inputs for s in sets]), np.concatenate([s.faces for s in sets]),
                    sources=[x for s in sets for x in s.sources], skipped=skipped)


# ---------------------------------------------------------------------------- model
def build_classifier(variant: str, n_classes: int, seed: int = 0, head_channels: int = 128, dropout: float = 0.2):
    """MV2 block of `variant` + a small classification head (deterministic in `seed`)."""
    import torch
    from torch import nn

    class MV2Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            base = create_mobilevit(variant, seed=seed)
            # attribute names match timm's so the state keys are those of the full model
            self.stem = base.stem
            self.stages = nn.Sequential(base.stages[0], base.stages[1])
            channels = base.feature_info[1]["num_chs"]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                self.head = nn.Sequential(
                    nn.Conv2d(channels, head_channels, 1, bias=False), nn.BatchNorm2d(head_channels), nn.SiLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(head_channels, n_classes),
                )

        def forward(self, x):
            return self.head(self.stages(self.stem(x)))

    return MV2Classifier()


# ---------------------------------------------------------------------------- training
@dataclass
class PretrainSettings:
    variant: str = "mobilevit_xxs"
    representation: str = "flow"
    input_size: int = 128
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    head_channels: int = 128
    seed: int = 0
    num_threads: Optional[int] = None
    device: Optional[str] = None  # None: CUDA when available, else CPU

    def identity(self) -> dict[str, Any]:
        """Settings a resumed run must share with the checkpoint (epochs may grow)."""
        d = asdict(self)
        for k in ("epochs", "num_threads", "device"):
            d.pop(k)
        return d


@dataclass
class PretrainResult:
    weights: Path
    meta: dict[str, Any]
    history: list[dict[str, float]]
    resumed_from: int = 0


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("microfer", "torch", "timm", "numpy", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _save_checkpoint(model, optimizer, out: Path, doc: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                tensors[f"optim.{names[id(p)]}.{k}"] = v.detach().cpu().contiguous().clone()
    st_path = out / "checkpoint.safetensors"
    with atomic_path(st_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT})
    write_json(out / "checkpoint.json", {**doc, "format": CHECKPOINT_FORMAT, "weights_sha256": file_sha256(st_path)})


def _load_checkpoint(model, optimizer, out: Path, expect: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    json_path, st_path = out / "checkpoint.json", out / "checkpoint.safetensors"
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MicroferError(f"{json_path}: unreadable checkpoint description ({exc})") from None
    if doc.get("format") != CHECKPOINT_FORMAT or not st_path.is_file():
        raise MicroferError(f"{json_path}: not a microfer pretraining checkpoint (or its safetensors is missing)")
    if file_sha256(st_path) != doc.get("weights_sha256"):
        raise MicroferError(f"{st_path}: does not match the sha256 in {json_path.name}")
    for k in ("settings", "labels", "data_hash"):
        if doc.get(k) != expect[k]:
            raise MicroferError(f"{json_path}: cannot resume, the checkpoint's {k} differ from this run's "
                                f"(checkpoint {str(doc.get(k))[:120]}, now {str(expect[k])[:120]})")
    tensors = load_file(str(st_path))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    device = next(model.parameters()).device
    for n, p in model.named_parameters():
        state = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim.{n}.")
                 and "." not in k[len(f"optim.{n}."):]}
        if state:
            # AdamW keeps `step` on the CPU unless capturable
            optimizer.state[p] = {k: (v if k == "step" else v.to(device)) for k, v in state.items()}
    return doc


def pretrain(data: MacroSet, settings: PretrainSettings, out, resume: bool = False,
             progress: bool = True) -> PretrainResult:
    """Train MV2 block + head on `data`; write the block (and checkpoints) into `out`."""
    import torch
    import torch.nn.functional as F

    check_variant(settings.variant)
    check_kind(settings.representation)
    if data.representation != settings.representation or data.input_size != settings.input_size:
        raise MicroferError(f"macro data are {data.representation!r} at {data.input_size}px, settings ask for "
                            f"{settings.representation!r} at {settings.input_size}px")
    if len(data) == 0 or len(data.labels) < 2:
        raise MicroferError(f"pretraining needs samples of at least 2 emotions, got {len(data)} samples "
                            f"of {data.labels}")
    if settings.epochs < 1 or settings.batch_size < 2:
        raise MicroferError("pretraining needs epochs >= 1 and batch_size >= 2")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if settings.num_threads:
        torch.set_num_threads(int(settings.num_threads))
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    model = build_classifier(settings.variant, len(data.labels), settings.seed, settings.head_channels).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    identity = {"settings": settings.identity(), "labels": data.labels, "data_hash": data.data_hash()}
    start, history = 0, []
    if (out / "checkpoint.json").is_file():
        if not resume:
            raise MicroferError(f"{out}: holds a pretraining checkpoint; pass --resume to continue it, "
                                f"or choose an empty folder")
        doc = _load_checkpoint(model, optimizer, out, identity)
        start, history = int(doc["epochs_done"]), list(doc.get("history", []))
    n = len(data)
    counts = np.bincount(data.y, minlength=len(data.labels)).astype(np.float64)
    weights = torch.tensor(np.where(counts > 0, n / (len(data.labels) * np.maximum(counts, 1)), 0.0),
                           dtype=torch.float32, device=device)
    y_all = torch.from_numpy(data.y)

    epochs = range(start, settings.epochs)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc="pretrain", unit="epoch", initial=start, total=settings.epochs, disable=None)
    for epoch in epochs:
        lr = settings.lr * 0.5 * (1 + math.cos(math.pi * epoch / settings.epochs))
        for group in optimizer.param_groups:
            group["lr"] = lr
        rng = np.random.default_rng([settings.seed, epoch])
        order, flips = rng.permutation(n), rng.random(n) < 0.5
        torch.manual_seed(settings.seed * 1_000_003 + epoch)  # dropout stream of this epoch
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for start_i in range(0, n, settings.batch_size):
            idx = order[start_i:start_i + settings.batch_size]
            if idx.size < 2:  # BatchNorm cannot train on one sample
                continue
            x = data.batch(idx)
            f = flips[idx]
            if f.any():
                x[f] = flip_input(x[f], data.representation)
            xb = torch.from_numpy(x).to(device)
            yb = y_all[idx].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * idx.size
            correct += int((logits.argmax(1) == yb).sum())
            seen += idx.size
        history.append({"epoch": epoch + 1, "loss": round(total_loss / max(seen, 1), 6),
                        "train_accuracy": round(correct / max(seen, 1), 6), "lr": lr})
        if progress:
            epochs.set_postfix(loss=history[-1]["loss"], acc=history[-1]["train_accuracy"])
        _save_checkpoint(model, optimizer, out, {**identity, "epochs_done": epoch + 1, "history": history})

    meta = {
        "variant": settings.variant, "representation": settings.representation,
        "input_size": settings.input_size, "labels": data.labels, "data_hash": identity["data_hash"],
        "n_samples": n, "class_counts": {l: int(c) for l, c in zip(data.labels, counts)},
        "epochs": settings.epochs, "seed": settings.seed, "settings": settings.identity(),
        "sources": data.sources, "skipped": data.skipped, "history": history, "versions": _versions(),
    }
    weights_path = save_block_weights(model.cpu(), out, meta)
    return PretrainResult(weights=weights_path, meta=meta, history=history, resumed_from=start)
