"""Train once on every subject of a protocol and write a model bundle.

The same code as `loso` (`evaluate.gather_features` + `classify.select_and_fit`), with
the grid search's inner leave-subject-out now run over ALL subjects and the chosen
feature set + SVM fitted on all of them.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from microfer.errors import MicroferError


@dataclass
class TrainResult:
    bundle: Path
    feature_setting: Any  # features.FeatureSetting chosen
    choice: Any  # classify.FittedChoice (the in-memory model)
    n_samples: int
    n_subjects: int
    excluded: int
    class_counts: dict[str, int]


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in (
        "microfer",
        "torch",
        "timm",
        "scikit-learn",
        "numpy",
        "opencv-contrib-python-headless",
        "dlib-bin",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def train_bundle(
    protocol, cache, out, manifest=None, settings=None, progress: bool = True
) -> TrainResult:
    from microfer.learn.evaluate import LosoSettings
    from microfer.parallel import scheduler_context

    settings = settings or LosoSettings()
    with scheduler_context(
        settings.scheduler
    ):  # the grid search's candidates go to the cluster, if any
        return _train(protocol, cache, out, manifest, settings, progress)


def _train(protocol, cache, out, manifest, settings, progress: bool) -> TrainResult:
    from microfer.clip.cache import open_cache, prepare_settings_of
    from microfer.io import frame_sha256
    from microfer.learn.bundle import ArraySVM, save_bundle
    from microfer.learn.classify import select_and_fit
    from microfer.learn.evaluate import PARAM_GRIDS, gather_features
    from microfer.learn.features import FeatureModel, feature_config
    from microfer.learn.ood import fit_ood

    derived = prepare_settings_of(open_cache(cache)).get("source")
    if derived:  # refused before any feature is extracted
        # predict prepares a new clip from its frames; derived inputs (e.g. the circulated
        # composite flow images) say nothing about how to do that for a new clip
        raise MicroferError(
            f"{cache}: holds {derived} entries, not clips prepared from "
            f"frames by `microfer prepare`; evaluate them with `microfer loso`, but a bundle "
            f"for `predict` must be trained on a prepared cache"
        )
    from microfer.learn.evaluate import STACK_GRIDS, feature_grid

    learned = [fs.name for fs in feature_grid(settings) if getattr(fs, "is_learned", False)]
    if learned or settings.grid in STACK_GRIDS:  # refused before any feature is extracted
        raise MicroferError(
            f"grid {settings.grid!r}: {', '.join(learned) or 'a stack'} cannot go into a "
            f"bundle yet (networks trained on micro-expressions, stacks: `microfer loso` only); "
            f"train a bundle with a descriptor grid"
        )
    data = gather_features(protocol, cache, manifest, settings, progress)
    n_groups = len(set(data.groups))
    if n_groups < 2:
        raise MicroferError(
            f"protocol {data.protocol.name}: training needs at least 2 subjects in the cache "
            f"(the grid search selects by leave-subject-out), found {n_groups}"
        )
    if not data.prepare_settings:
        raise MicroferError(
            f"{cache}: the prepare cache has no settings.json; cannot record how clips "
            "were prepared (re-run `microfer prepare`)"
        )
    choice = select_and_fit(
        data.feature_sets,
        data.y,
        data.groups,
        np.arange(len(data.y)),
        inner_splits=settings.inner_splits,
        param_grid=PARAM_GRIDS[settings.grid],
        seed=settings.seed,
        scoring=settings.scoring,
        n_classes=len(data.classes),
        n_jobs=-1 if settings.scheduler else 1,
    )
    setting = {fs.name: fs for fs in data.feature_settings}[choice.feature_name]
    model = FeatureModel(setting, batch_size=1, num_threads=settings.num_threads)
    counts = {c: int((data.y == i).sum()) for i, c in enumerate(data.classes)}
    features = feature_config(setting)
    config: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": str(data.protocol.name),
        "classes": data.classes,
        "prepare": {k: v for k, v in data.prepare_settings.items()},
        "features": features,
        "svm": {**choice.params, "inner_uf1": round(float(choice.inner_score), 4)},
        "data": {
            "samples_sha256": frame_sha256(
                data.samples, ["dataset", "subject", "clip", "emotion", "y"]
            ),
            "n_samples": int(len(data.y)),
            "n_subjects": n_groups,
            "class_counts": counts,
        },
        "versions": versions(),
    }
    svm = ArraySVM.from_pipeline(choice.model)
    # the OOD score sees exactly the rows (and columns) the chosen SVM was fitted on
    ood = fit_ood(data.feature_sets[choice.feature_name], data.y, data.groups)
    onnx = (
        model.export_onnx(int(data.prepare_settings.get("size", 128))) if model.onnx_names else None
    )
    path = save_bundle(
        out, network_state=model.state_dict(), classifier=svm, config=config, onnx=onnx, ood=ood
    )
    return TrainResult(
        bundle=path,
        feature_setting=setting,
        choice=choice,
        n_samples=int(len(data.y)),
        n_subjects=n_groups,
        excluded=int(len(data.excluded)),
        class_counts=counts,
    )
