"""Batch augmentations of pretraining that erase or mix samples: cutout, mixup, cutmix, fmix.

    cutout  one square per sample set to the sample's mean (DeVries & Taylor 2017); labels kept
    mixup   x = lam x_i + (1 - lam) x_j, labels mixed the same (Zhang et al. 2018), lam ~ Beta(0.2, 0.2)
    cutmix  a box of x_j pasted into x_i, labels by area (Yun et al. 2019), lam ~ Beta(1, 1)
    fmix    a low-frequency random binary mask instead of a box (Harris et al. 2020): the
            top-lam quantile of Fourier noise with a 1/f^3 spectrum, lam ~ Beta(1, 1)

Written here rather than taken from timm (which has mixup and cutmix): fmix is not in timm,
and every draw comes from the epoch's numpy generator, so that a run's augmentation is a
pure function of (seed, epoch) like the rest of `pretrain` and `--resume` stays exact.
The operations are linear in the input, so they hold for flow inputs as they are (mixing
two flows is a flow; a cut-out region is "no motion"); flips stay with the training loop,
which negates u for flow.
"""

from __future__ import annotations

import numpy as np

from microfer.errors import MicroferError

MIXES = ("none", "cutout", "mixup", "cutmix", "fmix")
CUTOUT_FRACTION = 0.5  # side of the cut-out square, as a fraction of the image side
MIXUP_ALPHA = 0.2
CUTMIX_ALPHA = 1.0
FMIX_ALPHA = 1.0
FMIX_DECAY = 3.0


def check_mix(mix: str) -> str:
    if mix not in MIXES:
        raise MicroferError(
            f"unknown batch augmentation {mix!r}; expected one of {', '.join(MIXES)}"
        )
    return mix


def describe(mix: str) -> dict:
    """The batch augmentation, for the weights card."""
    doc = {
        "none": {},
        "cutout": {"side_fraction": CUTOUT_FRACTION},
        "mixup": {"alpha": MIXUP_ALPHA},
        "cutmix": {"alpha": CUTMIX_ALPHA},
        "fmix": {"alpha": FMIX_ALPHA, "decay_power": FMIX_DECAY},
    }[check_mix(mix)]
    return {"kind": mix, **doc}


def _box(rng: np.random.Generator, size: int, area: float) -> tuple[int, int, int, int]:
    """A square-ish box of about `area` x the image, centred uniformly (clipped at the edges)."""
    side = int(round(size * np.sqrt(max(area, 0.0))))
    cy, cx = rng.integers(0, size, 2)
    y0, x0 = max(0, cy - side // 2), max(0, cx - side // 2)
    return y0, min(size, cy + (side - side // 2)), x0, min(size, cx + (side - side // 2))


def fmix_mask(
    rng: np.random.Generator, size: int, lam: float, decay: float = FMIX_DECAY
) -> np.ndarray:
    """(size, size) bool mask holding a fraction `lam` of the pixels, in low-frequency blobs."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    freq = np.sqrt(fx**2 + fy**2)
    scale = 1.0 / np.maximum(freq, 1.0 / size) ** decay
    spectrum = (rng.standard_normal(freq.shape) + 1j * rng.standard_normal(freq.shape)) * scale
    noise = np.fft.irfft2(spectrum, s=(size, size))
    k = int(round(lam * size * size))
    mask = np.zeros(size * size, bool)
    if k > 0:
        mask[np.argsort(noise, axis=None)[-k:]] = True
    return mask.reshape(size, size)


def mix_batch(
    x: np.ndarray, y: np.ndarray, n_classes: int, mix: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, S, S) inputs and (N,) labels -> augmented inputs and (N, n_classes) soft targets."""
    check_mix(mix)
    x = np.array(x, np.float32, copy=True)
    n, size = x.shape[0], x.shape[-1]
    targets = np.eye(n_classes, dtype=np.float32)[np.asarray(y)]
    if mix == "none" or n < 2:
        return x, targets
    if mix == "cutout":
        for i in range(n):
            y0, y1, x0, x1 = _box(rng, size, CUTOUT_FRACTION**2)
            x[i, :, y0:y1, x0:x1] = x[i].mean(axis=(1, 2), keepdims=True)
        return x, targets
    partner = rng.permutation(n)
    if mix == "mixup":
        lam = rng.beta(MIXUP_ALPHA, MIXUP_ALPHA, n).astype(np.float32)
        x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner]
        return x, lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]
    out = x.copy()
    kept = np.empty(n, np.float32)
    for i in range(n):
        if mix == "cutmix":
            y0, y1, x0, x1 = _box(rng, size, 1.0 - rng.beta(CUTMIX_ALPHA, CUTMIX_ALPHA))
            out[i, :, y0:y1, x0:x1] = x[partner[i], :, y0:y1, x0:x1]
            kept[i] = 1.0 - (y1 - y0) * (x1 - x0) / (size * size)  # the box actually pasted
        else:
            mask = fmix_mask(rng, size, float(rng.beta(FMIX_ALPHA, FMIX_ALPHA)))
            out[i][:, ~mask] = x[partner[i]][:, ~mask]
            kept[i] = mask.mean()
    return out, kept[:, None] * targets + (1 - kept[:, None]) * targets[partner]
