"""Motion descriptors that need no training: the flow itself, pooled over a face grid.

They take the same `flow` network input as MobileViT ((N, 3, H, W): u, v, strain on a
fixed scale, see `microfer.clip.representation`) and give plain feature vectors, so the grid
search weighs them against the networks inside each training fold, as equals.

Every descriptor first brings the flow to a 28x28 face (area averaging: the size of the
circulated STSTNet inputs, and enough for a face's action units), then subtracts the
per-clip MEDIAN of u and of v. Most of a face does not move during a micro-expression,
so the median is the zero of motion; it removes what the face as a whole did (residual
head translation left by alignment, and the unknown offset of flows that were min-max
normalised per image, whose zero is not at a fixed value). On the 207 real composite
samples this centring alone took a linear/RBF SVM on the flow from UF1 0.633 to 0.708
(leakage-free LOSO; docs/results.md).

    flow_raw        the 28x28 flow as given (u, v, strain), not centred: the floor any
                    descriptor or network must beat
    flow_grid14     centred u, v, strain and flow magnitude averaged over 14x14 cells
    flow_grid7      the same over 7x7 cells
    flow_hoof4      per cell of a 4x4 grid: mean centred u, v, magnitude, strain and a
                    magnitude-weighted histogram of flow directions (8 bins, HOOF), in the
                    spirit of MDMO's main-direction flow per facial region
"""

from __future__ import annotations

from typing import Any

import numpy as np

from microfer.errors import BundleError, MicroferError
from microfer.models.registry import register_variants

WORK_SIZE = 28
HOOF_BINS = 8


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, size, size) by area averaging (exact block means when H = k*size)."""
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    if h % size == 0 and w % size == 0:
        return x.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))
    import cv2

    out = np.empty((n, c, size, size), np.float32)
    for i in range(n):
        out[i] = (
            cv2.resize(x[i].transpose(1, 2, 0), (size, size), interpolation=cv2.INTER_AREA)
            .reshape(size, size, c)
            .transpose(2, 0, 1)
        )
    return out


def _cells(x: np.ndarray, cells: int) -> np.ndarray:
    """(N, H, W) -> (N, cells, cells) means over a near-equal grid (edges like np.linspace)."""
    edges = np.linspace(0, x.shape[1], cells + 1).round().astype(int)
    out = np.empty((x.shape[0], cells, cells), np.float32)
    for i in range(cells):
        for j in range(cells):
            out[:, i, j] = x[:, edges[i] : edges[i + 1], edges[j] : edges[j + 1]].mean(axis=(1, 2))
    return out


def centred_flow(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """u, v (median-centred per clip) and strain, each (N, 28, 28)."""
    x = _resize(np.asarray(inputs, np.float32), WORK_SIZE)
    u = x[:, 0] - np.median(x[:, 0], axis=(1, 2), keepdims=True)
    v = x[:, 1] - np.median(x[:, 1], axis=(1, 2), keepdims=True)
    return u, v, x[:, 2]


class FlowDescriptor:
    """A training-free flow descriptor: numpy (N, 3, H, W) in, (N, D) float32 out."""

    is_network = False

    def __init__(self, kind: str, cells: int = 0):
        if kind not in ("raw", "grid", "hoof"):
            raise MicroferError(f"unknown flow descriptor kind {kind!r}")
        self.kind, self.cells = kind, int(cells)
        per_cell = {"raw": 0, "grid": 4, "hoof": 4 + HOOF_BINS}[kind]
        self.feature_dim = 3 * WORK_SIZE * WORK_SIZE if kind == "raw" else per_cell * self.cells**2

    def settings(self) -> dict[str, Any]:
        return {"descriptor": self.kind, "cells": self.cells, "work_size": WORK_SIZE}

    # A descriptor has no weights: empty state, so bundles treat it like any extractor.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, source: str = "network weights") -> None:
        if state:
            raise BundleError(
                f"{source}: holds {len(state)} tensors, but the {self.kind} flow descriptor has no weights"
            )

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        x = np.asarray(inputs, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise MicroferError(
                f"flow descriptor expects inputs of shape (N, 3, H, W), got {x.shape}"
            )
        n = x.shape[0]
        if self.kind == "raw":
            return _resize(x, WORK_SIZE).reshape(n, -1).astype(np.float32)
        u, v, strain = centred_flow(x)
        mag = np.sqrt(u**2 + v**2)
        parts = [_cells(a, self.cells).reshape(n, -1) for a in (u, v, strain, mag)]
        if self.kind == "hoof":
            # magnitude-weighted direction histogram per cell, normalised to sum 1 so it
            # describes the direction of the movement, not its size (the means carry that)
            bins = (
                np.floor((np.arctan2(v, u) + np.pi) / (2 * np.pi) * HOOF_BINS).astype(int)
                % HOOF_BINS
            )
            hist = np.stack(
                [_cells(mag * (bins == k), self.cells) for k in range(HOOF_BINS)], axis=-1
            )
            hist = hist / (hist.sum(axis=-1, keepdims=True) + 1e-6)
            parts.append(hist.reshape(n, -1))
        return np.concatenate(parts, axis=1).astype(np.float32)

    extract = __call__


DESCRIPTORS = {
    "flow_raw": ("raw", 0),
    "flow_grid14": ("grid", 14),
    "flow_grid7": ("grid", 7),
    "flow_hoof4": ("hoof", 4),
}


def _create(name: str, **_network_settings) -> FlowDescriptor:
    # layer / pool / weights / seed describe networks; a descriptor has none of them
    return FlowDescriptor(*DESCRIPTORS[name])


register_variants(DESCRIPTORS, "descriptor", _create)
