"""microfer: micro-expression recognition research toolkit.

The package reads as the data flow, in wings (README, "Layout"):

    datasets/  official coding files and layouts -> samples
    clip/      one clip: frames -> aligned face -> onset/apex -> flow (+ the prepare cache)
    synth/     synthetic clips and long videos from real faces
    models/    the model zoo, created by name
    learn/     protocols, features, grid search + SVM, LOSO, training, bundles
    recognise/ a trained bundle at work: predict, images, explain, serve
    spotting/  intervals in long videos, live
    bench/     timings and the demo (only the CLI imports it)

`microfer.predict(clip, model=BUNDLE)` gives the emotion of one clip.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# Old flat module paths -> their wing, importable for one release with a DeprecationWarning.
MOVED = {
    "_io": "io",
    "video": "clip.video",
    "face": "clip.face",
    "landmark_model": "clip.landmarks",
    "apex": "clip.apex",
    "motion": "clip.motion",
    "representation": "clip.representation",
    "prepare": "clip.prepare",
    "cache": "clip.cache",
    "protocols": "learn.protocols",
    "features": "learn.features",
    "classify": "learn.classify",
    "evaluate": "learn.evaluate",
    "permutation": "learn.permutation",
    "report": "learn.report",
    "train": "learn.train",
    "train_images": "learn.train_images",
    "bundle": "learn.bundle",
    "ood": "learn.ood",
    "models.pretrain": "learn.pretrain",
    "models.macro_data": "learn.macro_data",
    "models.pretrain_report": "learn.pretrain_report",
    "models.augment": "learn.augment",
    "models.mixing": "learn.mixing",
    "predict": "recognise.predict",
    "images": "recognise.images",
    "explain": "recognise.explain",
    "serve": "recognise.serve",
    "spot": "spotting.spot",
    "spot_eval": "spotting.spot_eval",
    "spot_report": "spotting.spot_report",
    "live": "spotting.live",
    "bench_prepare": "bench.prepare",
    "bench_spot": "bench.spot",
    "bench_spot_long": "bench.spot_long",
    "ood_eval": "bench.ood_eval",
    "demo": "bench.demo",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import microfer.video` gives the module `microfer.clip.video` itself, with a warning."""

    _own: dict = {}

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix(f"{__name__}.")
        if old != fullname and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"{__name__}.{MOVED[spec.name.removeprefix(f'{__name__}.')]}"
        warnings.warn(
            f"{spec.name} moved to {new}; the old path goes in microfer 0.3",
            DeprecationWarning,
            stacklevel=3,
        )
        module = importlib.import_module(new)
        self._own[new] = (module.__spec__, module.__loader__)
        return module

    def exec_module(self, module):
        # the import system stamped the alias's spec on the real module: give it its own back
        module.__spec__, module.__loader__ = self._own[module.__name__]


sys.meta_path.insert(0, _MovedModules())


def __getattr__(name):
    if (
        name == "predict"
    ):  # the top-level API: a callable module, loaded on first use (no torch, no dlib before)
        return importlib.import_module(f"{__name__}.recognise.predict")
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
