"""Build an image bundle: a macro-pretrained network's features of aligned faces + an SVM.

    microfer train-images --images FER2013 --out models/images [--test-by-subject CK+48] [--weights W]

The network is the shipped macro trunk (`--weights default`) or any apex-pretrained weights
of `microfer pretrain` (a MobileViT or a ViT).

Training images: FER-2013's train split (ROOT/train/<emotion>/*), at most `per_class` per
emotion drawn with a fixed seed (a few thousand images keep the SVM cheap on a CPU). Each
goes through the same face finder as `predict` (`microfer.clip.still.image_face`). The network
is frozen; the layer it is read at (`IMAGE_LAYERS`) and the SVM's settings are chosen by
inner cross-validation on the training images, then the SVM is fitted on all of them. FER-2013 names no subjects, so the inner folds and the OOD threshold's
held-out folds are random folds of images (fixed seed) -- a person may sit on both sides,
which makes the threshold a little low (more in-distribution images flagged), not high.

Test data choose nothing; they are predicted once at the end, for the record in bundle.json:
FER-2013's test split and, when given, the test subjects of CK+ (the same subject split as
the shipped trunk's card: sha256-ranked, 20%, seed 0). CK+ has contempt and no neutral:
contempt images are left out (the model has no such class) and counted.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from microfer.clip.representation import face_to_input
from microfer.clip.still import FACE_SIZE, image_face
from microfer.errors import ClipError, MicroferError
from microfer.io import package_versions
from microfer.learn.bundle import IMAGE_INPUT, ArraySVM, save_bundle
from microfer.learn.features import FeatureModel, FeatureSetting, feature_config
from microfer.learn.ood import fit_ood
from microfer.metrics import summarize
from microfer.models import resolve_weights
from microfer.models.vit import VARIANTS as VIT_VARIANTS
from microfer.models.weights import read_block_meta

DEFAULT_PER_CLASS = 600
# (layer, pooling) of the network offered to the inner folds, per backbone: the pretrained
# head's own input, and a 2x2 grid of an earlier layer (where a face's regions are still apart)
IMAGE_LAYERS = {
    "mobilevit": (("final", "avg"), ("stage4", "grid2"), ("final", "grid2")),
    "vit": (("final", "avg"), ("mid", "grid2"), ("final", "grid2")),
}
INNER_FOLDS = 3
# rbf only: a linear kernel in libsvm converges slowly on these overlapping classes (minutes
# per fit); the inner folds choose C
IMAGE_PARAM_GRID = [
    {"kernel": ["rbf"], "C": [1.0, 10.0], "gamma": ["scale"], "class_weight": ["balanced"]}
]
TRAINING_DATA_TERMS = {
    "FER-2013": "Facial Expression Recognition 2013 data of the ICML 2013 workshop 'Challenges in Representation "
    "Learning' (Goodfellow et al., Kaggle); faces collected from the web, released for research use.",
    "network": "the pretrained network's own data: see the card of `features.block_weights` (the shipped "
    "mobilevit_xxs_macro trunk: FER-2013 train + CK+ training subjects)",
    "bundle": "derived from these data: use it for non-commercial research, as their terms allow",
}


@dataclass
class ImageSet:
    files: list[Path]
    labels: list[str]  # normalised emotion of each file
    faces: np.ndarray = field(default_factory=lambda: np.zeros((0, 64, 64, 3), np.uint8))
    aligned: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    skipped: dict[str, str] = field(default_factory=dict)  # file -> reason


@dataclass
class ImageTrainResult:
    bundle: Path
    n_train: int
    class_counts: dict[str, int]
    params: dict[str, Any]
    inner_score: float
    test: dict[str, dict]
    features: str = ""


def _labelled_files(base: Path, expected: str) -> tuple[list[Path], list[str]]:
    from microfer.learn.macro_data import list_images, normalise_label

    files = list_images(base, expected)
    return files, [normalise_label(p.parent.name) for p in files]


def sample_per_class(files: Sequence[Path], labels: Sequence[str], per_class: int, seed: int):
    """At most `per_class` files of each label, drawn with `seed`, in file order."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        keep += sorted(rng.permutation(idx)[:per_class].tolist()) if len(idx) > per_class else idx
    keep.sort()
    return [files[i] for i in keep], [labels[i] for i in keep]


def load_faces(
    files: Sequence[Path], labels: Sequence[str], size: int, progress: bool, desc: str
) -> ImageSet:
    """Faces of the images as `predict` finds them; images without one are listed in `skipped`."""
    from tqdm import tqdm

    from microfer.clip.video import read_image

    out = ImageSet(files=[], labels=[])
    faces, aligned = [], []
    for path, label in tqdm(
        list(zip(files, labels)),
        desc=desc,
        unit="img",
        disable=None if progress else True,
        leave=False,
    ):
        try:
            face = image_face(read_image(path), str(path), size)
        except ClipError as exc:
            out.skipped[str(path)] = str(exc)
            continue
        out.files.append(path)
        out.labels.append(label)
        faces.append(face.face)
        aligned.append(face.aligned)
    out.faces = np.stack(faces) if faces else np.zeros((0, size, size, 3), np.uint8)
    out.aligned = np.array(aligned, bool)
    return out


def _features(model, faces: np.ndarray, batch: int = 256) -> np.ndarray:

    rows = [
        model.from_inputs({"apex": np.stack([face_to_input(f) for f in faces[i : i + batch]])})
        for i in range(0, len(faces), batch)
    ]
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def evaluate(svm, X: np.ndarray, labels: Sequence[str], classes: list[str]) -> dict:
    """Accuracy / macro F1 of the SVM's 7-way answer, and of the argmax over the labels the
    source has (as the trunk's card reports FER results); images of other labels left out."""

    known = np.array([lab in classes for lab in labels], bool)
    y = np.array([classes.index(lab) for lab, k in zip(labels, known) if k], np.int64)
    X = X[known]
    cols = [int(np.flatnonzero(svm.classes == i)[0]) for i in range(len(classes))]
    scores = svm.class_scores(X)[:, cols]
    pred = svm.predict(X)
    own = sorted(set(y.tolist()))
    pred_own = np.array(own)[np.argmax(scores[:, own], axis=1)]
    full, restricted = summarize(y, pred, classes), summarize(y, pred_own, classes)
    return {
        "n": int(known.sum()),
        "left_out_other_labels": int((~known).sum()),
        "accuracy": full["accuracy"],
        "macro_f1": full["uf1"],
        "accuracy_own_labels": restricted["accuracy"],
        "macro_f1_own_labels": restricted["uf1"],
        "confusion": full["confusion"],
    }


def image_feature_settings(weights="default") -> list:
    """The candidate feature sets of an image bundle on pretrained `weights` ("default": the
    shipped trunk); MicroferError when they were not pretrained on still faces."""

    path = resolve_weights(weights)
    if path is None:
        raise MicroferError(
            "an image bundle needs pretrained weights (--weights default or a pretrain output)"
        )
    meta = read_block_meta(path)
    if meta.get("representation") != "apex":
        raise MicroferError(
            f"{path}: pretrained on {meta.get('representation')!r} inputs; image bundles need "
            f"weights pretrained on still faces ('apex', e.g. `microfer pretrain --images ...`)"
        )
    variant = meta["variant"]
    layers = IMAGE_LAYERS["vit" if variant in VIT_VARIANTS else "mobilevit"]
    return [
        FeatureSetting(
            variant=variant,
            representation="apex",
            layer=layer,
            pool=pool,
            input_size=int(meta.get("input_size", 64)),
            block_weights=str(path),
        )
        for layer, pool in layers
    ]


# Over ~60 lines by its signature: the body is the steps in order.
def train_image_bundle(
    images,
    out,
    test_by_subject=None,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = 0,
    num_threads: Optional[int] = None,
    progress: bool = True,
    command: str = "",
    weights="default",
) -> ImageTrainResult:
    from microfer.learn.classify import select_and_fit

    images = Path(images)
    settings = image_feature_settings(weights)  # refuses unfit weights before any image is read
    files, labels = _labelled_files(
        images / "train", "ROOT/train/<emotion>/*.jpg (FER-2013 layout)"
    )
    files, labels = sample_per_class(files, labels, per_class, seed)
    train = load_faces(files, labels, FACE_SIZE, progress, "faces train")
    classes = sorted(set(train.labels))
    if len(classes) < 2:
        raise MicroferError(
            f"{images / 'train'}: images of at least 2 emotions are needed, found {classes}"
        )
    y = np.array([classes.index(lab) for lab in train.labels], np.int64)
    # no subjects in FER: random folds
    folds = np.random.default_rng(seed).permutation(len(y)) % INNER_FOLDS
    candidates = {
        fs.name: _features(FeatureModel(fs, batch_size=256, num_threads=num_threads), train.faces)
        for fs in settings
    }
    choice = select_and_fit(
        candidates,
        y,
        folds,
        np.arange(len(y)),
        inner_splits=INNER_FOLDS,
        param_grid=IMAGE_PARAM_GRID,
        n_classes=len(classes),
    )
    setting = {fs.name: fs for fs in settings}[choice.feature_name]
    model = FeatureModel(setting, batch_size=256, num_threads=num_threads)
    svm = ArraySVM.from_pipeline(choice.model)
    X = candidates[choice.feature_name]
    ood = fit_ood(X, y, folds, held_out="random fold of images (FER-2013 names no subjects)")
    tests = _score_tests(images, test_by_subject, model, svm, classes, progress)
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    config = _image_bundle_config(
        images, classes, setting, choice, seed, per_class, y, counts, train, tests, command
    )
    onnx = model.export_onnx(FACE_SIZE)
    path = save_bundle(
        out, network_state=model.state_dict(), classifier=svm, config=config, onnx=onnx, ood=ood
    )
    return ImageTrainResult(
        bundle=path,
        n_train=int(len(y)),
        class_counts=counts,
        params=dict(choice.params),
        inner_score=float(choice.inner_score),
        test=tests,
        features=setting.name,
    )


def _score_tests(images: Path, test_by_subject, model, svm, classes, progress) -> dict:
    """Accuracy and macro F1 on the FER test split and, if given, the CK+ test subjects."""
    from microfer.learn.macro_data import files_by_subject, normalise_label

    test_sets = [
        (f"{images.name}/test", *_labelled_files(images / "test", "ROOT/test/<emotion>/*.jpg"))
    ]
    if test_by_subject is not None:
        ck_files, subjects, (_, test_ids) = files_by_subject(test_by_subject)
        chosen = [p for p, s in zip(ck_files, subjects) if s in set(test_ids)]
        labels = [normalise_label(p.parent.name) for p in chosen]
        test_sets.append((f"{Path(test_by_subject).name}/test subjects", chosen, labels))
    tests = {}
    for name, t_files, t_labels in test_sets:
        data = load_faces(t_files, t_labels, FACE_SIZE, progress, f"faces {name}")
        tests[name] = {
            **evaluate(svm, _features(model, data.faces), data.labels, classes),
            "no_face_found_taken_whole": int((~data.aligned).sum()),
            "unreadable": len(data.skipped),
            "path": str(Path(t_files[0]).parents[1]) if t_files else "",
        }
    return tests


def _image_bundle_config(
    images, classes, setting, choice, seed, per_class, y, counts, train, tests, command
) -> dict:
    """bundle.json of an image bundle: what was trained on, chosen and measured."""

    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": IMAGE_INPUT,
        "classes": classes,
        "prepare": {
            "face_size": FACE_SIZE,
            "grey": True,
            "face": "dlib 68 landmarks, similarity onto microfer.clip.face.CANONICAL_POINTS; images of at most "
            "96 px without a detected face are taken whole (dataset face crops)",
        },
        "features": feature_config(setting),
        "svm": {
            **choice.params,
            "inner_uf1": round(float(choice.inner_score), 4),
            "inner_folds": f"{INNER_FOLDS} random folds of the training images (seed {seed})",
            "inner_uf1_by_candidate": {
                k: [round(v, 4) for v in vs] for k, vs in choice.scores.items()
            },
        },
        "data": {
            "training": str(images / "train"),
            "per_class_cap": per_class,
            "seed": seed,
            "n_train": int(len(y)),
            "class_counts": counts,
            "no_face_found_taken_whole": int((~train.aligned).sum()),
            "unreadable": len(train.skipped),
            "terms": TRAINING_DATA_TERMS,
        },
        "test": tests,
        "command": command,
        "versions": package_versions(),
    }
