"""Batched feature extraction (prepared clips -> (N, D) float32) with an on-disk feature cache.

Features depend only on the clip and the extractor settings -- never on labels -- so
`microfer loso` extracts them once for all clips per feature setting, then every fold
reads rows. The cache is one .npy file per (feature setting, clip key):

    FEATURE_DIR/<setting.key()>/setting.json      what made these features (for humans)
    FEATURE_DIR/<setting.key()>/<clip>-<hash>.npy one clip's feature vector; the hash covers
                                                  the clip key and, for a prepare cache, the
                                                  entry file's size and mtime

`setting.key()` hashes every setting that changes the numbers, including the sha256 of
pretrained weights and FEATURE_VERSION (bump it when the representation or
extractor code changes the numbers). Writes are atomic, no pickle (np.save/np.load with
allow_pickle=False).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np

from microfer.clip.representation import check_kind, stack_inputs
from microfer.errors import BundleError, MicroferError
from microfer.io import atomic_path, write_json
from microfer.models import create_extractor, is_descriptor, shipped_weights_sha256
from microfer.models.onnx_extractor import OnnxExtractor
from microfer.models.weights import read_block_meta
from microfer.records import PreparedClip

FEATURE_VERSION = 1


class ClipSource(Protocol):
    def load(self, key: str) -> PreparedClip: ...


@dataclass(frozen=True)
class FeatureSetting:
    """One feature set of the grid: which network, which input, which layer."""

    variant: str = "mobilevit_xxs"
    representation: str = "flow"
    layer: str = "final"
    pool: str = "avg"
    input_size: int = 128
    seed: int = 0
    block_weights: Optional[str] = (
        None  # pretrained weights (folder, .json or .safetensors), None = random init
    )

    @property
    def is_descriptor(self) -> bool:

        return is_descriptor(self.variant)

    @property
    def name(self) -> str:
        if self.is_descriptor:
            return f"{self.variant}/{self.representation}"
        parts = [self.variant, self.representation, self.layer, self.pool]
        if self.block_weights:
            parts.append("pre")
        return "/".join(parts)

    @property
    def parts(self) -> tuple["FeatureSetting", ...]:
        return (self,)

    @property
    def representations(self) -> tuple[str, ...]:
        return (self.representation,)

    def weights_sha256(self) -> Optional[str]:
        if self.is_descriptor:
            return None
        if not self.block_weights:  # random init, or a network that loads its shipped weights
            return shipped_weights_sha256(self.variant)

        return read_block_meta(self.block_weights).get("weights_sha256")

    def key(self) -> str:
        doc = asdict(self)
        doc["block_weights"] = self.weights_sha256()  # content, not path, decides
        doc["feature_version"] = FEATURE_VERSION
        blob = json.dumps(doc, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def create_extractor(
        self, batch_size: int = 32, num_threads: Optional[int] = None, device: str = "cpu"
    ):

        return create_extractor(
            self.variant,
            layer=self.layer,
            pool=self.pool,
            input_size=self.input_size,
            seed=self.seed,
            block_weights=Path(self.block_weights) if self.block_weights else None,
            batch_size=batch_size,
            num_threads=num_threads,
            device=device,
        )


def check_weights_fit(setting: FeatureSetting) -> None:
    """Refuse pretrained weights of another input representation (the variant is checked on loading)."""
    if setting.is_descriptor:
        if setting.representation != "flow":
            raise MicroferError(
                f"{setting.variant} describes flow; feature set {setting.name} gives it "
                f"{setting.representation!r} inputs"
            )
        return
    if not setting.block_weights:
        return

    meta = read_block_meta(setting.block_weights)
    rep = meta.get("representation")
    if rep is not None and rep != setting.representation:
        raise MicroferError(
            f"{setting.block_weights}: weights were pretrained on {rep!r} inputs, "
            f"feature set {setting.name} uses {setting.representation!r}"
        )


@dataclass(frozen=True)
class FusedSetting:
    """Several feature sets side by side (concatenated columns), e.g. motion + appearance.

    Each part is extracted (and cached) on its own; the SVM's scaler then standardises
    every column, so a part's weight in the kernel grows with its number of columns.
    """

    parts: tuple[FeatureSetting, ...]

    def __post_init__(self):
        if len(self.parts) < 2 or not all(isinstance(p, FeatureSetting) for p in self.parts):
            raise MicroferError("a fusion needs at least two single feature sets")

    @property
    def name(self) -> str:
        return " + ".join(p.name for p in self.parts)

    @property
    def representations(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.representation for p in self.parts))

    def key(self) -> str:
        return hashlib.sha256("+".join(p.key() for p in self.parts).encode()).hexdigest()[:16]


def _file_name(key: str, stamp: str = "") -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-80:]
    return f"{readable}-{hashlib.sha1((key + '|' + stamp).encode()).hexdigest()[:10]}.npy"


def _stamp(source, key: str) -> str:
    """Size and mtime of a cache entry: a re-prepared clip gets fresh features.

    (Copying a cache without preserving mtimes only costs a re-extraction.)
    """
    entry_path = getattr(source, "entry_path", None)
    if entry_path is None:
        return ""
    try:
        st = Path(entry_path(key)).stat()
    except (OSError, MicroferError):
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


class FeatureCache:
    """The .npy store of one feature setting."""

    def __init__(self, root, setting: FeatureSetting):
        self.setting = setting
        self.dir = Path(root) / setting.key()

    def path(self, key: str, stamp: str = "") -> Path:
        return self.dir / _file_name(key, stamp)

    def get(self, key: str, stamp: str = "", dim: Optional[int] = None) -> Optional[np.ndarray]:
        p = self.path(key, stamp)
        if not p.is_file():
            return None
        try:
            vec = np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed, not trusted
        if vec.ndim != 1 or (dim is not None and vec.shape[0] != dim):
            return None
        return vec.astype(np.float32, copy=False)

    def put(self, key: str, vec: np.ndarray, stamp: str = "") -> None:
        if not (self.dir / "setting.json").is_file():
            write_json(
                self.dir / "setting.json",
                {
                    **asdict(self.setting),
                    "name": self.setting.name,
                    "feature_version": FEATURE_VERSION,
                },
            )
        with atomic_path(self.path(key, stamp), suffix=".npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(vec, np.float32), allow_pickle=False)


# Over ~60 lines by its 9-argument signature and docstring; the body is short.
def extract_features(
    clips: Sequence[PreparedClip] | ClipSource,
    setting: "FeatureSetting | FusedSetting",
    keys: Optional[Sequence[str]] = None,
    feature_dir: Optional[Path] = None,
    batch_size: int = 32,
    num_threads: Optional[int] = None,
    device: str = "cpu",
    extractor=None,
    progress: bool = False,
) -> np.ndarray:
    """(N, D) float32 features of the clips, row i for clip i (or keys[i]).

    `clips` is either a list of PreparedClip or a clip source with `.load(key)` (a
    `microfer.clip.cache.Cache`), in which case `keys` are required and clips are loaded
    batch by batch. With `feature_dir` and `keys`, features are read from / written to
    the feature cache; a cached row is never recomputed.
    """

    if isinstance(setting, FusedSetting):
        if extractor is not None:
            raise MicroferError(
                "extract_features: pass no extractor for a fusion (each part builds its own)"
            )
        common = dict(keys=keys, feature_dir=feature_dir, batch_size=batch_size)
        common.update(num_threads=num_threads, device=device, progress=progress)
        blocks = [extract_features(clips, part, **common) for part in setting.parts]
        return np.concatenate(blocks, axis=1)
    check_kind(setting.representation)
    check_weights_fit(setting)
    is_list = isinstance(clips, (list, tuple))
    if not is_list and keys is None:
        raise MicroferError("extract_features: keys are required when clips come from a cache")
    n = len(clips) if is_list else len(keys)  # type: ignore[arg-type]
    if keys is not None and len(keys) != n:
        raise MicroferError(f"extract_features: {len(keys)} keys for {n} clips")
    store = (
        FeatureCache(feature_dir, setting)
        if (feature_dir is not None and keys is not None)
        else None
    )

    rows: list[Optional[np.ndarray]] = [None] * n
    stamps = [""] * n
    if store is not None:
        stamps = [_stamp(clips, k) for k in keys] if not is_list else stamps  # type: ignore[union-attr]
        rows = [store.get(k, s) for k, s in zip(keys, stamps)]  # type: ignore[arg-type]
    todo = [i for i in range(n) if rows[i] is None]
    if todo:
        if extractor is None:
            extractor = setting.create_extractor(
                batch_size=batch_size, num_threads=num_threads, device=device
            )
        batches = _compute(clips, keys, todo, setting, extractor, batch_size, progress)
        for chunk, feats in batches:
            for i, vec in zip(chunk, feats):
                rows[i] = vec
                if store is not None:
                    store.put(keys[i], vec, stamps[i])  # type: ignore[index]
    if n == 0:
        return np.zeros((0, 0), np.float32)
    dims = {r.shape[0] for r in rows if r is not None}
    if len(dims) != 1:  # stale entries of another shape were rejected above; this is a guard
        raise MicroferError(f"feature rows of differing sizes {sorted(dims)} for {setting.name}")
    return np.stack(rows).astype(np.float32)  # type: ignore[arg-type]


def _compute(clips, keys, todo, setting, extractor, batch_size: int, progress: bool):
    """(row indices, their features) batch by batch, clips loaded as they are needed."""

    is_list = isinstance(clips, (list, tuple))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(todo), desc=f"features {setting.name}", unit="clip", leave=False, disable=None
        )
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            names = [keys[i] if keys is not None else f"clip #{i}" for i in chunk]
            prepared = [clips[i] if is_list else clips.load(keys[i]) for i in chunk]
            yield chunk, extractor(stack_inputs(prepared, setting.representation, names))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def feature_config(setting: "FeatureSetting | FusedSetting") -> dict:
    """What a bundle records of a feature set (weights travel in the bundle, so no paths)."""
    if isinstance(setting, FusedSetting):
        return {"fusion": [feature_config(p) for p in setting.parts]}
    doc = {k: v for k, v in asdict(setting).items() if k != "block_weights"}
    doc["pretrained_block_sha256"] = setting.weights_sha256()
    return doc


def feature_setting_from_config(doc: dict) -> "FeatureSetting | FusedSetting":
    """Inverse of `feature_config` (raises TypeError / KeyError on a foreign document)."""
    if "fusion" in doc:
        return FusedSetting(tuple(feature_setting_from_config(p) for p in doc["fusion"]))
    fields = {k: v for k, v in doc.items() if k != "pretrained_block_sha256"}
    return FeatureSetting(**{**fields, "block_weights": None})


def _part_prefix(setting: "FeatureSetting | FusedSetting", i: int) -> str:
    return f"part{i}." if isinstance(setting, FusedSetting) else ""


def _onnx_name(setting: "FeatureSetting | FusedSetting", i: int) -> str:
    return f"network.{_part_prefix(setting, i)}onnx"


def onnx_names(setting: "FeatureSetting | FusedSetting") -> list[str]:
    """The ONNX file each network part of a feature set is exported to (descriptors have none)."""
    return [_onnx_name(setting, i) for i, p in enumerate(setting.parts) if not p.is_descriptor]


class FeatureModel:
    """The extractor(s) of one feature set: prepared clips in, (N, D) features out.

    What `train` stores in a bundle and `predict` rebuilds from it. A fusion has one
    extractor per part; their weights are stored under `part<i>.` prefixes.
    """

    def __init__(
        self,
        setting: "FeatureSetting | FusedSetting",
        batch_size: int = 1,
        num_threads: Optional[int] = None,
        device: str = "cpu",
        onnx: Optional[dict] = None,
    ):
        """`onnx`: {file name: path} of exported network parts (`onnx_names`); those parts run
        in onnxruntime and torch is not imported for them."""
        self.setting = setting
        onnx = onnx or {}
        self.extractors = []
        for i, part in enumerate(setting.parts):
            name = _onnx_name(setting, i)
            if not part.is_descriptor and name in onnx:
                self.extractors.append(OnnxExtractor(onnx[name], num_threads=num_threads))
            else:
                self.extractors.append(
                    part.create_extractor(
                        batch_size=batch_size, num_threads=num_threads, device=device
                    )
                )

    def _prefix(self, i: int) -> str:
        return _part_prefix(self.setting, i)

    @property
    def onnx_names(self) -> list[str]:
        return onnx_names(self.setting)

    def export_onnx(self, crop_size: int) -> dict[str, bytes]:
        """{file name: ONNX model} of every network part, for inputs of `crop_size` px."""
        return {
            _onnx_name(self.setting, i): ex.to_onnx(crop_size)
            for i, (p, ex) in enumerate(zip(self.setting.parts, self.extractors))
            if not p.is_descriptor
        }

    def __call__(
        self, prepared: Sequence[PreparedClip], names: Optional[Sequence[str]] = None
    ) -> np.ndarray:

        return self.from_inputs(
            {rep: stack_inputs(prepared, rep, names) for rep in self.setting.representations}
        )

    def from_inputs(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Features of network inputs already made: {representation: (N, 3, S, S)} -> (N, D)."""
        blocks = [
            ex(inputs[part.representation]) for part, ex in zip(self.setting.parts, self.extractors)
        ]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def state_dict(self) -> dict:
        return {
            self._prefix(i) + k: v
            for i, ex in enumerate(self.extractors)
            for k, v in ex.state_dict().items()
        }

    def load_state_dict(self, state: dict, source: str = "network weights") -> None:
        for i, ex in enumerate(self.extractors):
            if not hasattr(ex, "load_state_dict"):  # an ONNX graph carries its own weights
                continue
            prefix = self._prefix(i)
            ex.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)},
                source=source,
            )
        if isinstance(self.setting, FusedSetting):
            stray = [
                k
                for k in state
                if not any(k.startswith(self._prefix(i)) for i in range(len(self.extractors)))
            ]
            if stray:
                raise BundleError(
                    f"{source}: tensors belong to no part of the fusion (e.g. {stray[0]})"
                )
