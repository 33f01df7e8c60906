"""dlib's 68-point landmark model (an ensemble of regression trees) evaluated in numpy.

Why not dlib's own `shape_predictor`: it decodes its 100 MB file into memory on every start,
0.9 s of a one-clip `microfer predict` that is otherwise under a second, and it holds the
process's GIL while doing so. The same trees, converted ONCE into plain .npy files in the
user's cache folder, are memory-mapped in milliseconds. `predict` below follows dlib's
`shape_predictor::operator()` step by step (Kazemi & Sullivan 2014, dlib 19.x), in the
same float precision, and gives the same integer points: `tests/test_face.py` holds it to
dlib's on real photos.

The file format read here is dlib's serialization of `shape_predictor` version 1:
integers as a control byte (low nibble: byte count, bit 7: sign) then little-endian bytes,
floats as two such integers (mantissa, exponent), matrices as (-rows, -cols, values),
vectors as (size, items).

Cache folder: $MICROFER_CACHE, else $XDG_CACHE_HOME/microfer, else ~/.cache/microfer; one
subfolder per source file (path, size and mtime in its name's hash), written atomically.
Where it cannot be written, `load` returns None and microfer uses dlib's predictor.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from microfer.errors import MicroferError

FORMAT_VERSION = 1
ARRAYS = ("initial_shape", "split_index", "split_threshold", "leaves", "anchors", "deltas")


# ---------------------------------------------------------------------------- reading dlib's file
class _Reader:
    def __init__(self, data: bytes, source: Path):
        self.data, self.pos, self.source = data, 0, source

    def int(self) -> int:
        c = self.data[self.pos]
        n = c & 0x0F
        if n > 8 or self.pos + 1 + n > len(self.data):
            raise MicroferError(
                f"{self.source}: not a dlib shape predictor file (bad integer at byte {self.pos})"
            )
        v = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -v if c & 0x80 else v

    def float(self) -> float:
        mantissa = self.int()
        return math.ldexp(mantissa, self.int())

    def floats(self, n: int) -> np.ndarray:
        """n consecutive floats; the usual 6-byte encoding (3-byte mantissa, 1-byte exponent)
        is decoded in one go, anything else value by value."""
        block = (
            np.frombuffer(self.data, np.uint8, count=6 * n, offset=self.pos).reshape(n, 6)
            if self.pos + 6 * n <= len(self.data)
            else None
        )
        if (
            block is not None
            and ((block[:, 0] & 0x7F) == 3).all()
            and ((block[:, 4] & 0x7F) == 1).all()
        ):
            mantissa = (
                block[:, 1].astype(np.int64)
                | block[:, 2].astype(np.int64) << 8
                | block[:, 3].astype(np.int64) << 16
            )
            mantissa = np.where(block[:, 0] & 0x80, -mantissa, mantissa)
            exponent = np.where(
                block[:, 4] & 0x80, -block[:, 5].astype(np.int64), block[:, 5].astype(np.int64)
            )
            self.pos += 6 * n
            return np.ldexp(mantissa.astype(np.float64), exponent.astype(np.int32)).astype(
                np.float32
            )
        return np.array([self.float() for _ in range(n)], np.float32)

    def column(self) -> np.ndarray:
        rows, cols = self.int(), self.int()
        return self.floats(abs(rows) * abs(cols))


def read_dlib_file(path) -> dict[str, np.ndarray]:
    """The arrays of a dlib `shape_predictor` file (see the module docstring)."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    if r.int() != 1:
        raise MicroferError(f"{path}: not a version-1 dlib shape predictor file")
    initial = r.column()
    n_cascades = r.int()
    split_index, split_threshold, leaves = [], [], []
    for _ in range(n_cascades):
        n_trees = r.int()
        for _ in range(n_trees):
            n_splits = r.int()
            for _ in range(n_splits):
                split_index.append((r.int(), r.int()))
                split_threshold.append(r.float())
            leaves.extend(r.column() for _ in range(r.int()))
    anchors = [[r.int() for _ in range(r.int())] for _ in range(r.int())]
    deltas = [[(r.float(), r.float()) for _ in range(r.int())] for _ in range(r.int())]
    if r.pos != len(r.data):
        raise MicroferError(
            f"{path}: {len(r.data) - r.pos} bytes left over after the shape predictor"
        )
    n_trees = len(leaves) // (n_cascades * (n_splits + 1))
    dim = initial.size
    return {
        "initial_shape": initial.astype(np.float32),
        "split_index": np.asarray(split_index, np.int32).reshape(n_cascades, n_trees, n_splits, 2),
        "split_threshold": np.asarray(split_threshold, np.float32).reshape(
            n_cascades, n_trees, n_splits
        ),
        "leaves": np.stack(leaves)
        .astype(np.float32)
        .reshape(n_cascades, n_trees, n_splits + 1, dim),
        "anchors": np.asarray(anchors, np.int32),
        "deltas": np.asarray(deltas, np.float32),
    }


# ---------------------------------------------------------------------------- the cache
def cache_root() -> Path:
    if os.environ.get("MICROFER_CACHE"):
        return Path(os.environ["MICROFER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "microfer"


def _folder_for(source: Path) -> Path:
    st = source.stat()
    stamp = f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{FORMAT_VERSION}"
    return (
        cache_root() / f"landmarks-{source.stem}-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}"
    )


def convert(source, folder: Path) -> Path:
    """Write the arrays of dlib file `source` as .npy files into `folder` (atomically: a
    temporary sibling renamed into place, so a reader never sees half of it)."""
    source, folder = Path(source), Path(folder)
    folder.parent.mkdir(
        parents=True, exist_ok=True
    )  # an unwritable cache fails before the long read
    arrays = read_dlib_file(source)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", arrays[name], allow_pickle=False)
        meta = {
            "format_version": FORMAT_VERSION,
            "source": str(source),
            "source_size": source.stat().st_size,
            "shapes": {k: list(v.shape) for k, v in arrays.items()},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not another process's finished copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@dataclass(frozen=True)
class LandmarkModel:
    """The trees of a 68-point model: `predict(gray, box)` -> (68, 2) integer points."""

    initial_shape: np.ndarray  # (2P,) float32, x0 y0 x1 y1 ... in box-normalised units
    split_index: np.ndarray  # (cascades, trees, splits, 2) feature-pixel indices
    split_threshold: np.ndarray  # (cascades, trees, splits)
    leaves: np.ndarray  # (cascades, trees, splits + 1, 2P) shape increments
    anchors: np.ndarray  # (cascades, pixels) landmark each feature pixel hangs off
    deltas: np.ndarray  # (cascades, pixels, 2) offset from it, in the reference shape's frame

    @classmethod
    def from_folder(cls, folder: Path) -> "LandmarkModel":
        arrays = {}
        for name in ARRAYS:
            # plain views of the mapping: numpy's memmap subclass costs per indexing call
            arrays[name] = np.asarray(
                np.load(Path(folder) / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            )
        return cls(**arrays)

    def predict(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """Landmarks of the face in `box` (dlib rectangle: left, top, right, bottom, inclusive)
        of a 2-D uint8 image, as dlib's shape_predictor gives them: (68, 2) int64."""
        left, top, right, bottom = (float(v) for v in box)
        h, w = gray.shape
        reference = self.initial_shape.reshape(-1, 2)
        shape = np.array(self.initial_shape, np.float32)
        n_cascades, n_trees, depth = self.split_threshold.shape[0], self.split_threshold.shape[1], 0
        n_splits = self.split_threshold.shape[2]
        while (1 << depth) - 1 < n_splits:
            depth += 1
        trees = np.arange(n_trees)
        for c in range(n_cascades):
            current = shape.reshape(-1, 2)
            a = _similarity_2x2(reference, current)
            # in dlib: float tform * float delta + float anchor, then the box's affine map in double
            pts = (self.deltas[c] @ a.T).astype(np.float32) + current[self.anchors[c]]
            x = left + pts[:, 0].astype(np.float64) * (right - left)
            y = top + pts[:, 1].astype(np.float64) * (bottom - top)
            px, py = _round(x), _round(y)
            inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            values = np.zeros(len(px), np.float32)
            values[inside] = gray[py[inside], px[inside]]
            node = np.zeros(n_trees, np.int64)
            for _ in range(depth):
                idx = self.split_index[c, trees, node]
                left_branch = (
                    values[idx[:, 0]] - values[idx[:, 1]] > self.split_threshold[c, trees, node]
                )
                node = np.where(left_branch, 2 * node + 1, 2 * node + 2)
            increments = self.leaves[c, trees, node - n_splits]
            # one tree after another in float32, as dlib adds them: a reduction over the rows
            # of a C-ordered array adds row after row (pairwise summation is for the inner axis)
            shape = np.add.reduce(np.vstack([shape[None], increments]), axis=0, dtype=np.float32)
        points = shape.reshape(-1, 2).astype(np.float64)
        return np.stack(
            [
                _round(left + points[:, 0] * (right - left)),
                _round(top + points[:, 1] * (bottom - top)),
            ],
            axis=1,
        )


def _round(v: np.ndarray) -> np.ndarray:
    """dlib's double -> long point conversion: to nearest, halves away from zero."""
    return np.where(v >= 0, np.floor(v + 0.5), -np.floor(-v + 0.5)).astype(np.int64)


def _similarity_2x2(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The scaled rotation of dlib's find_similarity_transform(src, dst) (Umeyama), float32."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    sigma_src = (s**2).sum() / len(src)
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    det = np.linalg.det(cov)
    if det < 0 or (det == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        fix[1, 1] = -1  # dlib flips the smaller singular value's axis
    r = u @ fix @ vt
    scale = (sv * np.diag(fix)).sum() / sigma_src if sigma_src != 0 else 1.0
    return (scale * r).astype(np.float32)


def load(source) -> Optional[LandmarkModel]:
    """The numpy model of dlib file `source`, converted on first use; None when the cache
    folder cannot be written (the caller then uses dlib's own predictor)."""
    source = Path(source)
    folder = _folder_for(source)
    for attempt in range(2):
        try:
            if not (folder / "meta.json").is_file():
                convert(source, folder)
            return LandmarkModel.from_folder(folder)
        except OSError:
            return None
        except ValueError:  # a damaged copy (an .npy cut short): converted again, once
            shutil.rmtree(folder, ignore_errors=True)
    return None
