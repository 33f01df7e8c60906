"""One clip in, one emotion out.

`Predictor` holds a loaded bundle (network + SVM) and runs the SAME code paths as
training: `microfer.clip.spot_then_prepare.prepare_interval` (the shared policy: what the
caller did not give of onset/apex/offset is spotted, then `prepare_clip` aligns and
computes the flow), the bundle's feature extractor, the bundle's SVM for the label.
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from microfer.clip.face import load_models
from microfer.clip.one_clip import PrepareSettings  # clip.prepare imports pandas
from microfer.clip.representation import KINDS
from microfer.clip.spot_then_prepare import MIN_FRAMES, prepare_interval  # noqa: F401
from microfer.clip.video import ArraySource, open_frames
from microfer.errors import BundleError, MicroferError
from microfer.io import file_sha256
from microfer.learn.bundle import IMAGE_INPUT, load_bundle
from microfer.learn.features import FeatureModel, feature_setting_from_config, onnx_names
from microfer.learn.input_ood import input_statistics
from microfer.models.fer_teacher import teacher_numpy_state, teacher_paths
from microfer.models.onnx_extractor import onnxruntime_available
from microfer.recognise.explain import occlusion_map, write_overlays

RUNTIMES = ("auto", "onnx", "torch")
PROBABILITY_KIND = (
    "calibrated: multinomial logistic regression on the SVM scores, fitted on out-of-fold "
    "scores of the training subjects; the label stays the SVM's"
)


@dataclass
class Prediction:
    label: str
    scores: dict[str, float]  # SVM decision scores per class (NOT probabilities)
    onset: int
    apex: int
    offset: int
    given: list[str]  # which of onset/apex/offset the caller gave
    spotted: list[str]  # which were spotted from motion
    face_box: tuple[int, int, int, int]
    n_frames: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: str = ""
    # motion vs the first frame of the scanned range, one value per frame of motion_frames
    # (what onset/apex/offset were spotted on; empty when all three were given)
    motion_curve: list[float] = field(default_factory=list)
    motion_frames: list[int] = field(default_factory=list)
    # relative Mahalanobis distance of the features to the training data (`microfer.learn.ood`);
    # None for bundles trained without it. ood: score above the bundle's threshold, so the
    # label is kept but should not be trusted (the input is unlike anything trained on)
    ood_score: Optional[float] = None
    ood_threshold: Optional[float] = None
    ood: Optional[bool] = None
    # bundles trained on circulated inputs: the input check (`microfer.learn.input_ood`), the
    # flow image's texture and the apex face's look against the real training clips; None
    # without one. `ood` is then true when either score is above its threshold.
    input_ood_score: Optional[float] = None
    input_ood_threshold: Optional[float] = None
    explanation: list[str] = field(
        default_factory=list
    )  # PNGs written by `explain` (predict --explain)
    # calibrated class probabilities (sum to 1) from the bundle's calibrator, fitted on
    # out-of-fold scores of the training subjects; None for bundles trained without one
    probabilities: Optional[dict[str, float]] = None

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["face_box"] = list(self.face_box)
        doc["score_kind"] = "svm one-vs-one votes + squashed confidence (not probabilities)"
        doc["probability_kind"] = (
            PROBABILITY_KIND
            if self.probabilities is not None
            else "none: the bundle was trained without a calibrator (retrain to get them)"
        )
        return doc

    def text(self) -> str:
        ranked = sorted(self.scores.items(), key=lambda kv: -kv[1])
        lines = [
            f"emotion: {self.label}" + ("   [OUT OF DISTRIBUTION: unreliable]" if self.ood else ""),
            "scores:  " + "  ".join(f"{k} {v:.3f}" for k, v in ranked) + "   (SVM decision scores)",
            f"frames:  onset {self.onset}, apex {self.apex}, offset {self.offset} of {self.n_frames}"
            f"  (given: {', '.join(self.given) or 'none'}; spotted: {', '.join(self.spotted) or 'none'})",
            f"face:    box {self.face_box}",
            "timings: " + ", ".join(f"{k} {v:.1f} ms" for k, v in self.timings_ms.items()),
        ]
        lines.insert(2, probability_line(self.probabilities))
        lines.insert(3, ood_line(self.ood_score, self.ood_threshold))
        if self.input_ood_score is not None:
            lines.insert(4, input_line(self.input_ood_score, self.input_ood_threshold))
        if self.explanation:
            lines.append("explain: " + ", ".join(self.explanation) + "   (occlusion sensitivity)")
        if self.notes:
            lines.append(f"notes:   {self.notes}")
        return "\n".join(lines)


def probability_line(probabilities: Optional[dict[str, float]]) -> str:
    if probabilities is None:
        return "probabilities: none (bundle trained without a calibrator)"
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])
    return "probabilities: " + "  ".join(f"{k} {v:.3f}" for k, v in ranked) + "   (calibrated)"


def calibrated(bundle, scores: np.ndarray) -> Optional[dict[str, float]]:
    """Class name -> calibrated probability for one row of the SVM's class scores (columns =
    `bundle.classifier.classes`); None when the bundle has no calibrator."""
    if bundle.calibrator is None:
        return None
    full = np.zeros(len(bundle.class_names))
    full[bundle.classifier.classes] = scores
    prob = bundle.calibrator.probabilities(full)[0]
    return {name: round(float(p), 4) for name, p in zip(bundle.class_names, prob)}


def ood_line(score: Optional[float], threshold: Optional[float]) -> str:
    if score is None:
        return "ood:     no score (bundle trained without one)"
    verdict = "OUT OF DISTRIBUTION" if score > threshold else "in distribution"
    return f"ood:     score {score:.2f}, threshold {threshold:.2f}: {verdict}"


def input_line(score: float, threshold: float) -> str:
    verdict = "UNLIKE THE REAL TRAINING CLIPS" if score > threshold else "like the training clips"
    return f"input:   score {score:.2f}, threshold {threshold:.2f}: {verdict}"


def input_ood_fields(check, teacher_state, prepared, ood: dict) -> dict:
    """Prediction's input_ood_score / input_ood_threshold, and `ood` updated to flag a clip
    either score puts out of distribution (unchanged without an input check)."""
    if check is None:
        return {**ood, "input_ood_score": None, "input_ood_threshold": None}
    score = float(check.score(input_statistics([prepared], teacher_state))[0])
    return {
        **ood,
        "ood": bool(ood["ood"]) or score > check.threshold,
        "input_ood_score": round(score, 4),
        "input_ood_threshold": round(check.threshold, 4),
    }


def ood_fields(ood, feats: np.ndarray) -> dict:
    """Prediction's ood_score / ood_threshold / ood for one row of features (all None without a score)."""
    if ood is None:
        return {"ood_score": None, "ood_threshold": None, "ood": None}
    score = float(ood.score(feats)[0])
    return {
        "ood_score": round(score, 4),
        "ood_threshold": round(ood.threshold, 4),
        "ood": score > ood.threshold,
    }


def bundle_network(
    bundle, feature_setting, runtime: str = "auto", num_threads: Optional[int] = None
):
    """(FeatureModel with the bundle's weights, what runs it: "onnx", "torch" or "none").

    `runtime` for the network: "onnx" (the bundle's ONNX export in onnxruntime: no torch),
    "torch" (the weights in timm's MobileViT), or "auto" (onnx when the bundle has it).
    """

    if runtime not in RUNTIMES:
        raise MicroferError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    onnx = {} if runtime == "torch" else bundle.onnx
    if runtime == "onnx":
        missing = [n for n in onnx_names(feature_setting) if n not in onnx]
        if missing:
            raise BundleError(
                f"{bundle.path}: has no {missing[0]} (trained before bundles carried "
                f"ONNX exports); use runtime 'torch' or 'auto', or retrain it"
            )
        if not onnxruntime_available():
            raise MicroferError(
                "runtime 'onnx' needs the package onnxruntime (pip install onnxruntime)"
            )
    elif runtime == "auto":
        onnx = onnx if onnxruntime_available() else {}
    model = FeatureModel(feature_setting, batch_size=1, num_threads=num_threads, onnx=onnx)
    model.load_state_dict(bundle.network, source=str(bundle.path / "network.safetensors"))
    # "none": training-free descriptors only
    used = (
        "none"
        if not model.onnx_names
        else "onnx"
        if all(n in onnx for n in model.onnx_names)
        else "torch"
    )
    return model, used


def input_problem(config: dict, prepare) -> Optional[str]:
    """Why a clip prepared with `prepare` (PrepareSettings) cannot give what the bundle's
    model reads (bundle.json "representation", written by `learn.train.bundle_input`);
    None when it can. Bundles written before that entry read what their prepare gives."""

    rep = config.get("representation")
    if rep is None:
        return None
    if not isinstance(rep, dict) or not isinstance(rep.get("representations"), list):
        return "entry 'representation' must be a mapping with a list 'representations'"
    reads = [str(r) for r in rep["representations"]]
    unknown = [r for r in reads if r not in KINDS]
    if unknown:
        return f"the model reads {unknown[0]!r} inputs, which this microfer cannot make"
    units = rep.get("flow_units")
    if "flow" in reads and units != prepare.flow_units:
        return (
            f"the model reads flow in {units!r} units but its prepare settings (flow_format "
            f"{prepare.flow_format!r}) give {prepare.flow_units!r}: a clip cannot give its input"
        )
    source = rep.get("source", "frames")
    made_elsewhere = [r for r in reads if r != "flow"] if source != "frames" else []
    if made_elsewhere:
        return (
            f"the model reads {made_elsewhere[0]!r} inputs as {source} made them, which "
            "predict cannot make from a clip (only the flow representation can be recomputed)"
        )
    return None


class Predictor:
    """A loaded model bundle, ready to predict many clips (the extractor is built once)."""

    def __init__(self, bundle, num_threads: Optional[int] = None, runtime: str = "auto"):
        """`runtime` for the network: "onnx" (the bundle's ONNX export in onnxruntime: no torch),
        "torch" (the weights in timm's MobileViT), or "auto" (onnx when the bundle has it)."""

        self.bundle = bundle if hasattr(bundle, "classifier") else load_bundle(bundle)
        cfg = self.bundle.config
        if cfg.get("input") == IMAGE_INPUT:
            raise BundleError(
                f"{self.bundle.path}: an image bundle (it reads still face images); clips, long "
                "videos and streams need a clip bundle from `microfer train`"
            )
        try:
            self.prepare_settings = PrepareSettings(**cfg["prepare"])
            # pretrained weights travel inside network.safetensors, not as separate files
            self.feature_setting = feature_setting_from_config(cfg["features"])
        except (TypeError, KeyError, ValueError, AttributeError, MicroferError) as exc:
            raise BundleError(
                f"{self.bundle.path}: settings in bundle.json do not fit this microfer ({exc})"
            ) from None
        problem = input_problem(cfg, self.prepare_settings)
        if problem:
            raise BundleError(f"{self.bundle.path / 'bundle.json'}: {problem}")
        self.feature_model, self.runtime = bundle_network(
            self.bundle, self.feature_setting, runtime, num_threads
        )
        self.classes = self.bundle.class_names
        self.teacher_state = None
        if self.bundle.input_ood is not None:
            self.teacher_state = teacher_numpy_state()
            fitted = self.bundle.input_ood.teacher_sha256
            if fitted and fitted != file_sha256(teacher_paths()[0]):
                raise BundleError(
                    f"{self.bundle.path / 'bundle.json'}: its input check was fitted on the logits "
                    "of another FER teacher than this microfer ships; retrain the bundle"
                )

        load_models()  # so per-clip timings measure the work, not the one-off model load

    def features(self, prepared) -> np.ndarray:
        return self.feature_model([prepared])

    def predict(
        self,
        clip,
        onset: Optional[int] = None,
        apex: Optional[int] = None,
        offset: Optional[int] = None,
        explain=None,
    ) -> Prediction:
        """`explain`: a folder to write occlusion-sensitivity overlays of the apex face and the
        flow to (`microfer.recognise.explain`); it re-runs features + SVM once per patch position."""
        timings: dict[str, float] = {}
        t = time.perf_counter()
        if isinstance(clip, (str, Path)):
            source, name = open_frames(clip), str(clip)
        else:
            frames = list(clip)
            source, name = ArraySource(frames, list(range(len(frames)))), "frames"
        timings["open"] = (time.perf_counter() - t) * 1000
        interval = prepare_interval(
            source, name, onset, apex, offset, self.prepare_settings, timings=timings
        )
        prepared = interval.clip
        t = time.perf_counter()
        feats = self.features(prepared)
        timings["network"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        scores = self.bundle.classifier.class_scores(feats)[0]
        label_idx = int(self.bundle.classifier.predict(feats)[0])
        timings["svm"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        ood = input_ood_fields(
            self.bundle.input_ood, self.teacher_state, prepared, ood_fields(self.bundle.ood, feats)
        )
        timings["ood"] = (time.perf_counter() - t) * 1000
        explanation = []
        if explain is not None:
            t = time.perf_counter()
            occ = occlusion_map(self.feature_model, self.bundle.classifier, prepared, label_idx)
            explanation = [str(p) for p in write_overlays(prepared, occ, explain)]
            timings["explain"] = (time.perf_counter() - t) * 1000
        cls_idx = self.bundle.classifier.classes
        return Prediction(
            label=self.classes[label_idx],
            scores={self.classes[int(c)]: round(float(s), 4) for c, s in zip(cls_idx, scores)},
            onset=int(prepared.onset),
            apex=int(prepared.apex),
            offset=int(prepared.offset),
            given=interval.given,
            spotted=interval.spotted,
            face_box=tuple(int(v) for v in prepared.face_box),
            n_frames=len(source.numbers),
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            notes="; ".join(interval.notes),
            **ood,
            explanation=explanation,
            probabilities=calibrated(self.bundle, scores),
            motion_curve=[round(float(v), 5) for v in interval.curve],
            motion_frames=[int(n) for n in interval.curve_frames],
        )


def predict(
    clip,
    model,
    onset: Optional[int] = None,
    apex: Optional[int] = None,
    offset: Optional[int] = None,
    explain=None,
) -> Prediction:
    """Emotion of one clip (video file, frame folder, or a sequence of BGR arrays).

    `model` is a bundle directory or a `Predictor` (reuse one for many clips).
    """
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    return predictor.predict(clip, onset=onset, apex=apex, offset=offset, explain=explain)


class _CallableModule(types.ModuleType):
    """Lets `microfer.predict(clip, model=...)` (the top-level API, which is this module) call
    `predict` while the name stays a module (importing a submodule rebinds the attribute)."""

    def __call__(self, clip, model, onset=None, apex=None, offset=None) -> Prediction:
        return predict(clip, model, onset=onset, apex=apex, offset=offset)


sys.modules[__name__].__class__ = _CallableModule
