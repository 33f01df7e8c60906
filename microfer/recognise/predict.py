"""One clip in, one emotion out.

`Predictor` holds a loaded bundle (network + SVM) and runs the SAME code paths as
training: `prepare.prepare_clip` for alignment/apex/flow, `representation.to_input` and
the bundle's MobileViT extractor for features, the bundle's SVM for the label.

Onset/apex/offset may be given (absolute frame numbers; for a video, 0-based frame
indices). What is not given is spotted: the whole clip is aligned once on its first
frame, the motion curve relative to that frame is computed (`apex.motion_curve`), and
`apex.spot_interval` puts the apex at the motion peak, the onset at the last low-motion
frame before it and the offset at the first low-motion frame after it.
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from microfer.errors import ClipError

MIN_FRAMES = 4  # fewer frames cannot show an onset, a rise and an apex
RUNTIMES = ("auto", "onnx", "torch")


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
    explanation: list[str] = field(
        default_factory=list
    )  # PNGs written by `explain` (predict --explain)

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["face_box"] = list(self.face_box)
        doc["score_kind"] = "svm one-vs-one votes + squashed confidence (not probabilities)"
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
        lines.insert(2, ood_line(self.ood_score, self.ood_threshold))
        if self.explanation:
            lines.append("explain: " + ", ".join(self.explanation) + "   (occlusion sensitivity)")
        if self.notes:
            lines.append(f"notes:   {self.notes}")
        return "\n".join(lines)


def ood_line(score: Optional[float], threshold: Optional[float]) -> str:
    if score is None:
        return "ood:     no score (bundle trained without one)"
    verdict = "OUT OF DISTRIBUTION" if score > threshold else "in distribution"
    return f"ood:     score {score:.2f}, threshold {threshold:.2f}: {verdict}"


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
    from microfer.errors import BundleError, MicroferError
    from microfer.learn.features import FeatureModel, onnx_names
    from microfer.models.onnx_extractor import onnxruntime_available

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


class Predictor:
    """A loaded model bundle, ready to predict many clips (the extractor is built once)."""

    def __init__(self, bundle, num_threads: Optional[int] = None, runtime: str = "auto"):
        """`runtime` for the network: "onnx" (the bundle's ONNX export in onnxruntime: no torch),
        "torch" (the weights in timm's MobileViT), or "auto" (onnx when the bundle has it)."""
        from microfer.clip.prepare import PrepareSettings
        from microfer.errors import BundleError, MicroferError
        from microfer.learn.bundle import load_bundle
        from microfer.learn.features import feature_setting_from_config

        self.bundle = bundle if hasattr(bundle, "classifier") else load_bundle(bundle)
        cfg = self.bundle.config
        try:
            self.prepare_settings = PrepareSettings(**cfg["prepare"])
            # pretrained weights travel inside network.safetensors, not as separate files
            self.feature_setting = feature_setting_from_config(cfg["features"])
        except (TypeError, KeyError, ValueError, AttributeError, MicroferError) as exc:
            raise BundleError(
                f"{self.bundle.path}: settings in bundle.json do not fit this microfer ({exc})"
            ) from None
        self.feature_model, self.runtime = bundle_network(
            self.bundle, self.feature_setting, runtime, num_threads
        )
        self.classes = self.bundle.class_names
        from microfer.clip.face import load_models

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
        import dataclasses

        from microfer.clip.apex import spot_interval
        from microfer.clip.prepare import prepare_clip
        from microfer.clip.video import ArraySource, open_frames

        timings: dict[str, float] = {}
        t = time.perf_counter()
        if isinstance(clip, (str, Path)):
            source = open_frames(clip)
            name = str(clip)
        else:
            frames = list(clip)
            source = ArraySource(frames, list(range(len(frames))))
            name = "frames"
        timings["open"] = (time.perf_counter() - t) * 1000
        numbers = list(source.numbers)
        if len(numbers) < MIN_FRAMES:
            raise ClipError(f"{name}: {len(numbers)} frame(s); a clip needs at least {MIN_FRAMES}")
        for what, value in (("onset", onset), ("apex", apex), ("offset", offset)):
            if value is not None and value not in numbers:
                raise ClipError(
                    f"{name}: {what} frame {value} is not in the clip "
                    f"(frames {numbers[0]}..{numbers[-1]})"
                )
        given = [
            k for k, v in (("onset", onset), ("apex", apex), ("offset", offset)) if v is not None
        ]
        # Frames the caller gave are used as given or refused, never replaced.
        user_apex = apex is not None
        if user_apex and onset is not None and apex <= onset:
            raise ClipError(
                f"{name}: the given apex {apex} is not after the given onset {onset}; give an apex "
                "after the onset, or none to have it spotted"
            )
        if user_apex and offset is not None and apex > offset:
            raise ClipError(
                f"{name}: the given apex {apex} is after the given offset {offset}; give an apex "
                "at or before the offset, or none to have it spotted"
            )
        if onset is not None and offset is not None and offset <= onset:
            raise ClipError(
                f"{name}: the given offset {offset} is not after the given onset {onset}"
            )
        spotted: list[str] = []
        notes: list[str] = []
        curve, curve_frames = [], []
        first, last = (
            (onset if onset is not None else numbers[0]),
            (offset if offset is not None else numbers[-1]),
        )
        if onset is None or offset is None:
            # spot over the given (or whole) range, aligned once on its first frame; the second
            # pass below reuses the scan's decoded frames, and its alignment when the onset stays
            memo: dict = {}
            scan = prepare_clip(
                source, first, None, last, self.prepare_settings, timings=timings, memo=memo
            )
            span = [n for n in numbers if first <= n <= last]
            curve, curve_frames = list(scan.motion_curve), span
            i_on, i_apex, i_off = spot_interval(scan.motion_curve)
            # spotted bounds stay inside the run of frames with a face around the apex
            missing = set(scan.no_face_frames)
            if (
                not user_apex and span[i_apex] in missing
            ):  # the peak of a smoothed edge: take scan's
                i_apex = span.index(scan.apex)
            centre = apex if user_apex else span[i_apex]
            if centre in missing:
                from microfer.clip.video import frame_ranges

                raise ClipError(
                    f"{name}: no face found in the given apex frame {apex} "
                    f"(frames {frame_ranges(sorted(missing))} have none)"
                )
            lo = hi = span.index(centre)
            while lo > 0 and span[lo - 1] not in missing:
                lo -= 1
            while hi < len(span) - 1 and span[hi + 1] not in missing:
                hi += 1
            if onset is None:
                onset, spotted = max(span[i_on], span[lo]), spotted + ["onset"]
            if offset is None:
                offset, spotted = min(span[max(i_off, i_apex)], span[hi]), spotted + ["offset"]
            if user_apex:  # the given apex is kept: spotted bounds make room for it
                if onset >= apex:
                    onset = span[lo]
                    notes.append(f"spotted onset moved to {onset}, before the given apex {apex}")
                if offset < apex:
                    offset = span[hi]
                    notes.append(f"spotted offset moved to {offset}, after the given apex {apex}")
                if onset >= apex:
                    raise ClipError(
                        f"{name}: the given apex {apex} is the first frame "
                        f"{'with a face ' if missing else ''}of the clip; there is no onset before it"
                    )
            elif onset < span[i_apex] <= offset:
                apex, spotted = span[i_apex], spotted + ["apex"]
            if offset <= onset:  # no rise to speak of: fall back to the whole range
                onset, offset = first, last
            if not user_apex and (onset, apex) == (first, scan.apex):
                prepared = dataclasses.replace(scan, offset=offset)  # same flow; the spotted offset
            else:
                prepared = prepare_clip(
                    source,
                    onset,
                    apex,
                    offset,
                    self.prepare_settings,
                    timings=timings,
                    strict_apex=user_apex,
                    memo=memo,
                )
                memo.clear()
                notes += [
                    n
                    for n in scan.notes.split("; ")
                    if n.startswith("no face") and n not in prepared.notes
                ]
        else:
            prepared = prepare_clip(
                source,
                onset,
                apex,
                offset,
                self.prepare_settings,
                timings=timings,
                strict_apex=user_apex,
            )
        notes = [n for n in prepared.notes.split("; ") if n] + notes
        if apex is None or prepared.apex_source == "spotted":
            spotted = sorted(set(spotted) | {"apex"})
        t = time.perf_counter()
        feats = self.features(prepared)
        timings["network"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        scores = self.bundle.classifier.class_scores(feats)[0]
        label_idx = int(self.bundle.classifier.predict(feats)[0])
        timings["svm"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        ood = ood_fields(self.bundle.ood, feats)
        timings["ood"] = (time.perf_counter() - t) * 1000
        explanation = []
        if explain is not None:
            from microfer.recognise.explain import occlusion_map, write_overlays

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
            given=given,
            spotted=[s for s in ("onset", "apex", "offset") if s in spotted],
            face_box=tuple(int(v) for v in prepared.face_box),
            n_frames=len(numbers),
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            notes="; ".join(notes),
            **ood,
            explanation=explanation,
            motion_curve=[round(float(v), 5) for v in curve],
            motion_frames=[int(n) for n in curve_frames],
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
