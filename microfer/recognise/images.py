"""Face images in, emotion out: the macro-expression counterpart of `microfer.recognise.predict`.

An image bundle is a model bundle (`microfer.learn.bundle`: safetensors + JSON, integrity hash,
ONNX network, OOD score) whose bundle.json says `"input": "image"`; it is written by
`microfer.learn.train_images`. Its features are a macro-pretrained network's -- the shipped
trunk unless `train-images --weights` named another -- on grey 64-px faces (the 'apex'
representation, as it was pretrained), its classifier an SVM on them.

The face of an image is found and aligned as a clip's is (dlib's 68 landmarks, the same
similarity onto `microfer.clip.face.CANONICAL_POINTS`): FER-2013's 48-px crops put the eyes
0.37 of the side apart (median of 239 test images dlib found a face in), microfer's crop
0.36, so aligned photos look like the training crops. Images at most `SMALL_CROP` px whose
face dlib cannot find (a fifth of FER-2013's) are taken as face crops as they are,
the datasets' convention; larger images without a face are refused.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from microfer.clip.representation import face_to_input
from microfer.clip.still import FACE_SIZE, image_face, list_image_files  # noqa: F401  (importable from here too)
from microfer.errors import BundleError, ClipError, MicroferError
from microfer.learn.bundle import IMAGE_INPUT as INPUT_KIND
from microfer.learn.bundle import load_bundle
from microfer.learn.features import feature_setting_from_config
from microfer.models.image_model import ImageModel, grey64


def is_image_bundle(bundle) -> bool:
    """A loaded Bundle, or a bundle folder: then only its bundle.json is peeked at (unverified:
    the predictor chosen by it loads and verifies the bundle; anything unreadable is "not images"
    and left to that loader's errors)."""
    if hasattr(bundle, "config"):
        return bundle.config.get("input") == INPUT_KIND
    import json

    try:
        doc = json.loads((Path(bundle) / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("input") == INPUT_KIND


@dataclass
class ImagePrediction:
    image: str
    label: str
    scores: dict[str, float]  # SVM decision scores per class (NOT probabilities)
    face_box: Optional[
        tuple[int, int, int, int]
    ]  # None: no face detected, the image taken as a face crop
    aligned: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    ood_score: Optional[float] = None
    ood_threshold: Optional[float] = None
    ood: Optional[bool] = None
    # calibrated class probabilities (sum to 1): the shipped image model's; None for SVM bundles
    probabilities: Optional[dict[str, float]] = None
    model: Optional[str] = None  # what answered (the image model's file, or the bundle)

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["face_box"] = list(self.face_box) if self.face_box else None
        doc["score_kind"] = (
            "logistic-head logits; probabilities: softmax(logits / T), T fitted in training"
            if self.probabilities is not None
            else "svm one-vs-one votes + squashed confidence (not probabilities)"
        )
        return doc

    def text(self) -> str:
        from microfer.recognise.predict import ood_line

        ranked = sorted(self.scores.items(), key=lambda kv: -kv[1])
        face = (
            f"box {self.face_box}, aligned"
            if self.aligned
            else "no face detected: the image taken as a face crop"
        )
        if self.probabilities is not None:
            probs = sorted(self.probabilities.items(), key=lambda kv: -kv[1])
            lines = ["  probabilities: " + "  ".join(f"{k} {v:.3f}" for k, v in probs)]
        else:
            lines = [
                "  scores:  "
                + "  ".join(f"{k} {v:.3f}" for k, v in ranked)
                + "   (SVM decision scores)",
                "  " + ood_line(self.ood_score, self.ood_threshold),
            ]
        return "\n".join(
            [
                f"{self.image}: {self.label}"
                + ("   [OUT OF DISTRIBUTION: unreliable]" if self.ood else ""),
                *lines,
                f"  face:    {face}",
                "  timings: " + ", ".join(f"{k} {v:.1f} ms" for k, v in self.timings_ms.items()),
            ]
        )


class ImagePredictor:
    """A loaded image bundle, ready for many images (the network is built once)."""

    def __init__(self, bundle, num_threads: Optional[int] = None, runtime: str = "auto"):
        from microfer.clip.face import load_models
        from microfer.recognise.predict import bundle_network

        self.bundle = bundle if hasattr(bundle, "classifier") else load_bundle(bundle)
        if not is_image_bundle(self.bundle):
            raise BundleError(
                f"{self.bundle.path}: a clip bundle (from `microfer train`); images need an image "
                f"bundle from `microfer train-images`"
            )
        try:
            self.feature_setting = feature_setting_from_config(self.bundle.config["features"])
            self.face_size = int(self.bundle.config["prepare"]["face_size"])
        except (TypeError, KeyError, ValueError, AttributeError, MicroferError) as exc:
            raise BundleError(
                f"{self.bundle.path}: settings in bundle.json do not fit this microfer ({exc})"
            ) from None
        self.feature_model, self.runtime = bundle_network(
            self.bundle, self.feature_setting, runtime, num_threads
        )
        self.classes = self.bundle.class_names
        load_models()

    def features(self, faces: Sequence[np.ndarray]) -> np.ndarray:

        return self.feature_model.from_inputs({"apex": np.stack([face_to_input(f) for f in faces])})

    def predict(self, image, name: Optional[str] = None) -> ImagePrediction:
        """One image: a path, or a BGR / grey array (`name` is then what errors call it)."""
        from microfer.recognise.predict import ood_fields

        timings: dict[str, float] = {}
        name, face = read_face(image, name, self.face_size, timings)
        t = time.perf_counter()
        feats = self.features([face.face])
        timings["network"] = (time.perf_counter() - t) * 1000
        svm = self.bundle.classifier
        scores = svm.class_scores(feats)[0]
        label = self.classes[int(svm.predict(feats)[0])]
        return ImagePrediction(
            image=name,
            label=label,
            scores={self.classes[int(c)]: round(float(s), 4) for c, s in zip(svm.classes, scores)},
            face_box=face.box,
            aligned=face.aligned,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            **ood_fields(self.bundle.ood, feats),
        )


def read_face(image, name: Optional[str], face_size: int, timings: dict):
    """A path or an array -> (its name for errors, the face found and aligned in it); the two
    steps' times go into `timings` as "read" and "face"."""
    from microfer.clip.video import read_image

    t = time.perf_counter()
    if isinstance(image, (str, Path)):
        name = str(image)
        image = read_image(Path(image))
    name = name or "image"
    timings["read"] = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    face = image_face(image, name, face_size)
    timings["face"] = (time.perf_counter() - t) * 1000
    return name, face


class DefaultImagePredictor:
    """The shipped image model (`microfer.models.image_model`): what `microfer predict FACE.jpg`
    uses without `--model`. Calibrated probabilities; no SVM, no OOD score."""

    def __init__(self, path=None, num_threads: Optional[int] = None):
        from microfer.clip.face import load_models

        if num_threads:  # only a Lite0 trunk runs in torch; the teacher runs in numpy
            import sys

            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(int(num_threads))
        self.model = ImageModel(path)
        self.classes = self.model.classes
        load_models()

    def predict(self, image, name: Optional[str] = None) -> ImagePrediction:
        timings: dict[str, float] = {}
        name, face = read_face(image, name, FACE_SIZE, timings)
        t = time.perf_counter()
        logits = self.model.logits(self.model.features(grey64(face.face)[None]))
        prob = self.model.probabilities(None, logits=logits)[0]
        timings["network"] = (time.perf_counter() - t) * 1000
        return ImagePrediction(
            image=name,
            label=self.classes[int(prob.argmax())],
            scores={c: round(float(v), 4) for c, v in zip(self.classes, logits[0])},
            face_box=face.box,
            aligned=face.aligned,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            probabilities={c: float(v) for c, v in zip(self.classes, prob)},
            model=str(self.model.path),
        )


def predict_images(images, model=None, failures: Optional[list] = None) -> list[ImagePrediction]:
    """Emotion of an image file, of every image in a folder, or of a list of paths.

    `model` is an image bundle directory, an `ImagePredictor` / `DefaultImagePredictor`, or
    None: the shipped image model. `failures`: when a list, an image that cannot be read or
    holds no face is appended to it as (path, reason) and the others are still predicted;
    without it the first such image raises.
    """
    if model is None:
        model = DefaultImagePredictor()
    predictor = (
        model
        if isinstance(model, (ImagePredictor, DefaultImagePredictor))
        else ImagePredictor(model)
    )
    if isinstance(images, (str, Path)):
        images = list_image_files(images) if Path(images).is_dir() else [images]
    if failures is None:
        return [predictor.predict(p) for p in images]
    results = []
    for p in images:
        try:
            results.append(predictor.predict(p))
        except ClipError as exc:  # one bad image of a folder: reported, not fatal
            failures.append((Path(p), str(exc)))
    return results
