"""Train once on every subject of a protocol and write a model bundle.

The same code as `loso` (`evaluate.gather_features` + `classify.select_and_fit`), with
the grid search's inner leave-subject-out now run over ALL subjects and the chosen
feature set + SVM fitted on all of them; its calibrator (`folds.fold_calibrator`) is
fitted on out-of-fold scores over those same inner subject splits.

A cache of the circulated composite inputs (`prepare composite_inputs`) trains too, on
the feature sets that read the flow only: its 28x28 u, v, strain images (min-max per
image) are what `prepare --flow tvl1 --flow-format minmax28` computes from frames
(clip/circulated.py), so the bundle records those prepare settings and `predict` makes
the same representation from a clip. Its apex crops are not something predict can make
(another crop, another size), so no feature set on them is trained.

bundle.json "representation" records what the model reads: the flow units and representations
its features take, and what it was trained on; `predict` refuses a bundle whose input
its prepare settings cannot give (`recognise.predict.input_problem`).

A bundle trained on circulated inputs also carries an input check (`learn.input_ood`): the
flow image's texture and the apex face's look, against the training rows, so that a
synthetic or non-face clip is flagged where the feature OOD score cannot tell it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from microfer.errors import MicroferError
from microfer.io import file_sha256, frame_sha256, package_versions
from microfer.learn.bundle import ArraySVM, save_bundle
from microfer.learn.features import FeatureModel, feature_config
from microfer.learn.input_ood import fit_input_check, input_statistics
from microfer.learn.loso_settings import LosoSettings
from microfer.learn.ood import fit_ood
from microfer.models.fer_teacher import teacher_numpy_state, teacher_paths
from microfer.parallel import scheduler_context


@dataclass
class TrainResult:
    bundle: Path
    feature_setting: Any  # features.FeatureSetting chosen
    choice: Any  # classify.FittedChoice (the in-memory model)
    n_samples: int
    n_subjects: int
    excluded: int
    class_counts: dict[str, int]


def train_bundle(
    protocol, cache, out, manifest=None, settings=None, progress: bool = True
) -> TrainResult:
    settings = settings or LosoSettings()
    # the grid search's candidates go to the cluster, if any
    with scheduler_context(settings.scheduler):
        return _train(protocol, cache, out, manifest, settings, progress)


def _train(protocol, cache, out, manifest, settings, progress: bool) -> TrainResult:
    # imported here: pandas and scikit-learn come with them, and the CLI imports this module
    # for `microfer --help` too
    from microfer.clip.cache import open_cache, prepare_settings_of
    from microfer.learn.classify import select_and_fit
    from microfer.learn.evaluate import gather_features
    from microfer.learn.folds import fold_calibrator
    from microfer.learn.grids import PARAM_GRIDS

    derived = prepare_settings_of(open_cache(cache)).get("source")
    if derived:  # checked before any feature is extracted
        settings = _derived_settings(cache, derived, settings)
    _refuse_unbundlable(settings)
    data = gather_features(protocol, cache, manifest, settings, progress)
    n_groups = _check_trainable(data, cache)
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
    prepare, model_input = bundle_input(data.prepare_settings, setting)
    config = _bundle_config(data, choice, setting, prepare, model_input, counts)
    svm = ArraySVM.from_pipeline(choice.model)
    # the OOD score sees exactly the rows (and columns) the chosen SVM was fitted on
    ood = fit_ood(data.feature_sets[choice.feature_name], data.y, data.groups)
    # out-of-fold scores over the same subject splits as the grid search (`learn.calibrate`)
    calibrator = fold_calibrator(
        data.feature_sets,
        data.y,
        data.groups,
        np.arange(len(data.y)),
        choice,
        settings.inner_splits,
        len(data.classes),
    )
    input_ood = input_check_of(cache, data.samples["key"], data.groups) if derived else None
    # a network reads 28-px inputs only where all it reads is a circulated-style flow
    onnx_size = (
        model_input["flow_size"]
        if set(setting.representations) == {"flow"}
        else int(prepare.get("size", 128))
    )
    onnx = model.export_onnx(onnx_size) if model.onnx_names else None
    path = save_bundle(
        out,
        network_state=model.state_dict(),
        classifier=svm,
        config=config,
        onnx=onnx,
        ood=ood,
        calibrator=calibrator,
        input_ood=input_ood,
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


def input_check_of(cache, keys, groups):
    """The input check (`learn.input_ood`) of the cache entries `keys` (the rows the SVM is
    fitted on; `groups` their subjects, in the same order), its threshold from those subjects
    only: other entries of the cache play no part."""
    from microfer.clip.cache import open_cache

    entries = open_cache(cache)
    clips = [entries.load(key) for key in keys]
    check = fit_input_check(input_statistics(clips, teacher_numpy_state()), np.asarray(groups))
    check.teacher_sha256 = file_sha256(teacher_paths()[0])
    return check


def _refuse_unbundlable(settings) -> None:
    """MicroferError, before any feature is extracted, for a grid a bundle cannot hold."""
    from microfer.learn.grids import STACK_GRIDS, feature_grid

    learned = [fs.name for fs in feature_grid(settings) if getattr(fs, "is_learned", False)]
    if learned or settings.grid in STACK_GRIDS:
        raise MicroferError(
            f"grid {settings.grid!r}: {', '.join(learned) or 'a stack'} cannot go into a "
            f"bundle yet (networks trained on micro-expressions, stacks: `microfer loso` only); "
            f"train a bundle with a descriptor grid"
        )


def _check_trainable(data, cache) -> int:
    """The number of subjects; MicroferError where the grid search or the bundle cannot work."""
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
    return n_groups


def _bundle_config(data, choice, setting, prepare, model_input, counts) -> dict[str, Any]:
    """bundle.json: what the model is, what it reads, and what it was trained on."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": str(data.protocol.name),
        "classes": data.classes,
        "prepare": prepare,
        "representation": model_input,
        "features": feature_config(setting),
        "svm": {**choice.params, "inner_uf1": round(float(choice.inner_score), 4)},
        "data": {
            "samples_sha256": frame_sha256(
                data.samples, ["dataset", "subject", "clip", "emotion", "y"]
            ),
            "n_samples": int(len(data.y)),
            "n_subjects": len(set(data.groups)),
            "class_counts": counts,
        },
        "versions": package_versions(),
    }


def _derived_settings(cache, derived: str, settings):
    """LosoSettings restricted to the feature sets predict can feed from a clip: those on
    the flow alone; MicroferError when a derived cache is not the circulated composite."""
    from microfer.datasets.composite_inputs import NAME
    from microfer.learn.grids import FEATURE_GRIDS, feature_grid

    if derived != NAME:
        raise MicroferError(
            f"{cache}: holds {derived} entries, which `predict` cannot compute from a clip; "
            f"a bundle can be trained on caches of `microfer prepare` or of {NAME}"
        )
    spec = list(settings.features) or list(FEATURE_GRIDS.get(settings.grid, []))
    fsets = feature_grid(replace(settings, features=tuple(spec)))
    keep = tuple(t for t, fs in zip(spec, fsets) if set(fs.representations) == {"flow"})
    if not keep:
        raise MicroferError(
            f"{cache}: holds {NAME} entries, whose apex crops predict cannot make from a clip; "
            f"the feature sets asked for ({', '.join(spec)}) all need them: use feature sets "
            "on the flow (e.g. --grid motion)"
        )
    return replace(settings, features=keep)


def bundle_input(cache_settings: dict, setting) -> tuple[dict, dict]:
    """(bundle.json "prepare", bundle.json "representation") for a cache's settings and the chosen
    feature set: how predict prepares a clip, and what the model reads."""
    from microfer.clip.circulated import CIRCULATED_SIZE
    from microfer.clip.one_clip import PrepareSettings
    from microfer.datasets.composite_inputs import NAME

    derived = cache_settings.get("source")
    if derived == NAME:
        # the recipe of the circulated files, computed from frames (clip/circulated.py)
        prepare = asdict(PrepareSettings(flow="tvl1", flow_format="minmax28"))
        source = NAME
        trained_on = "circulated STSTNet flow images (u, v, strain, 28x28) of real clips"
    else:
        prepare = dict(cache_settings)
        source = "frames"
        trained_on = "clips prepared from frames by `microfer prepare`"
    fmt = prepare.get("flow_format", "pixels")
    return prepare, {
        "representations": list(setting.representations),
        "flow_units": "minmax_per_image" if fmt == "minmax28" else "pixels",
        "flow_size": CIRCULATED_SIZE if fmt == "minmax28" else int(prepare.get("size", 128)),
        "source": source,
        "trained_on": trained_on,
    }
