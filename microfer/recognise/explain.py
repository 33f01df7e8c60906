"""Where a decision came from: occlusion sensitivity over the aligned face.

The classifier may be an RBF SVM (non-linear) on motion descriptors that have no feature
map, so gradients (Grad-CAM) do not apply in general. Occlusion needs only the forward
pass, whatever the feature set: a square patch is slid over the network inputs (every
representation the feature set uses -- apex face, flow, onset/apex -- at once, since they
share the aligned crop), features and SVM are re-run, and each pixel gets the mean drop in
the predicted class's score over the patches covering it. Masked means set to 0 in the
input's fixed scale (`microfer.clip.representation`): no motion for flow, the mean colour for
the apex face -- the neutral value of each input.

The score is the class's summed one-vs-one decision values (`ArraySVM.confidence`), not
the votes, so a patch that weakens the decision shows before it flips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from microfer.clip.representation import stack_inputs
from microfer.io import atomic_path

OVERLAY_SIZE = 256  # px of the written PNGs (the crop is 128 px by default: too small to read)
PATCH_FRACTION = (
    8  # patch side = crop side / 8 (16 px of a 128-px face: an eye, a brow, a lip corner)
)
STRIDE_FRACTION = 16  # patches overlap by half
BATCH = 32


@dataclass
class OcclusionMap:
    heat: np.ndarray  # (S, S) mean drop of the class score when the pixel is masked
    base_score: float  # the class score of the whole input
    class_index: int  # into the bundle's class names
    patch: int
    stride: int
    top_box: tuple[
        int, int, int, int
    ]  # (x0, y0, x1, y1) of the patch whose masking dropped the score most


def network_inputs(feature_model, prepared) -> dict[str, np.ndarray]:
    """{representation: (1, 3, S, S)} of one prepared clip, for every input the feature set uses."""

    return {rep: stack_inputs([prepared], rep) for rep in feature_model.setting.representations}


def occlude(inputs: dict[str, np.ndarray], box: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """Copies of the inputs with box (x0, y0, x1, y1) set to the neutral value 0 in every channel."""
    x0, y0, x1, y1 = box
    out = {}
    for rep, x in inputs.items():
        x = x.copy()
        x[..., y0:y1, x0:x1] = 0.0
        out[rep] = x
    return out


def class_score(
    feature_model, classifier, inputs: dict[str, np.ndarray], class_index: int
) -> np.ndarray:
    """(N,) score of bundle class `class_index` for a batch of inputs."""
    column = int(np.flatnonzero(classifier.classes == class_index)[0])
    return classifier.confidence(feature_model.from_inputs(inputs))[:, column]


def _starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:  # the last patch reaches the edge
        starts.append(size - patch)
    return starts


def occlusion_map(
    feature_model,
    classifier,
    prepared,
    class_index: int,
    patch: Optional[int] = None,
    stride: Optional[int] = None,
) -> OcclusionMap:
    inputs = network_inputs(feature_model, prepared)
    size = next(iter(inputs.values())).shape[-1]
    patch = patch or max(2, size // PATCH_FRACTION)
    stride = stride or max(1, size // STRIDE_FRACTION)
    base = float(class_score(feature_model, classifier, inputs, class_index)[0])
    boxes = [
        (x, y, x + patch, y + patch)
        for y in _starts(size, patch, stride)
        for x in _starts(size, patch, stride)
    ]
    drops = []
    for start in range(0, len(boxes), BATCH):
        chunk = boxes[start : start + BATCH]
        masked = [occlude(inputs, b) for b in chunk]
        batch = {rep: np.concatenate([m[rep] for m in masked]) for rep in inputs}
        drops.extend(base - class_score(feature_model, classifier, batch, class_index))
    total = np.zeros((size, size))
    count = np.zeros((size, size))
    for (x0, y0, x1, y1), d in zip(boxes, drops):
        total[y0:y1, x0:x1] += d
        count[y0:y1, x0:x1] += 1
    top = boxes[int(np.argmax(drops))]
    return OcclusionMap(
        heat=(total / count).astype(np.float32),
        base_score=base,
        class_index=class_index,
        patch=patch,
        stride=stride,
        top_box=tuple(int(v) for v in top),
    )


def _overlay(background_bgr: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Heat (>= 0 parts, scaled to its max) in the JET colours over a background, both OVERLAY_SIZE."""
    bg = cv2.resize(
        background_bgr, (OVERLAY_SIZE, OVERLAY_SIZE), interpolation=cv2.INTER_LINEAR
    ).astype(np.float32)
    h = np.clip(heat, 0, None)
    h = h / h.max() if h.max() > 0 else h
    h = cv2.resize(
        h.astype(np.float32), (OVERLAY_SIZE, OVERLAY_SIZE), interpolation=cv2.INTER_LINEAR
    )
    colour = cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    alpha = 0.65 * h[..., None]
    return np.clip(bg * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)


def flow_picture(flow: np.ndarray) -> np.ndarray:
    """The onset->apex flow as a BGR image: magnitude in grey, arrows every 8 px of the crop."""
    flow = np.nan_to_num(np.asarray(flow, np.float32))
    mag = np.hypot(flow[..., 0], flow[..., 1])
    top = float(np.percentile(mag, 99)) or 1.0  # display scale only
    grey = (np.clip(mag / top, 0, 1) * 200).astype(np.uint8)
    size = flow.shape[0]
    scale = OVERLAY_SIZE / size
    pic = cv2.cvtColor(cv2.resize(grey, (OVERLAY_SIZE, OVERLAY_SIZE)), cv2.COLOR_GRAY2BGR)
    step = max(1, size // 16)
    for y in range(step // 2, size, step):
        for x in range(step // 2, size, step):
            u, v = flow[y, x] / top * step * 0.9
            p0 = (int(x * scale), int(y * scale))
            p1 = (int((x + u) * scale), int((y + v) * scale))
            if p0 != p1:
                cv2.arrowedLine(pic, p0, p1, (255, 255, 255), 1, tipLength=0.3)
    return pic


def write_overlays(prepared, occ: OcclusionMap, out) -> list[Path]:
    """apex_face.png and flow.png (OVERLAY_SIZE square) under `out`; returns their paths."""

    out = Path(out)
    pictures = {
        "apex_face.png": _overlay(np.asarray(prepared.apex_face), occ.heat),
        "flow.png": _overlay(flow_picture(prepared.flow), occ.heat),
    }
    written = []
    for name, image in pictures.items():
        with atomic_path(out / name) as tmp:
            ok, blob = cv2.imencode(".png", image)
            Path(tmp).write_bytes(blob.tobytes())
        written.append(out / name)
    return written
