"""`microfer train`, `microfer predict` and `microfer demo`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from microfer.cli import finish
from microfer.cli.evaluate import FEATURES_OPTION, GRID_OPTION, SCHEDULER_OPTION, WEIGHTS_OPTION


@click.command("train")
@click.option(
    "--protocol", required=True, help="protocol name (protocols/*.yaml), e.g. megc2019-composite"
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="prepare cache (settings folder, or its parent holding exactly one)",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    help="manifest CSV(s) instead of the protocol's shipped one (repeatable)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="bundle folder to write",
)
@GRID_OPTION
@FEATURES_OPTION
@click.option("--seed", type=int, default=0, show_default=True, help="network initialisation seed")
@WEIGHTS_OPTION
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads for feature extraction"
)
@SCHEDULER_OPTION
def train_cmd(protocol, cache, manifest, out, grid, features, seed, weights, threads, scheduler):
    """Fit the whole pipeline on all subjects of PROTOCOL (grid search inside) and write a model bundle."""
    from microfer.learn.evaluate import LosoSettings
    from microfer.learn.train import train_bundle
    from microfer.models import resolve_weights

    settings = LosoSettings(
        grid=grid,
        features=tuple(features),
        seed=seed,
        num_threads=threads,
        block_weights=resolve_weights(weights),
        scheduler=scheduler,
    )
    result = train_bundle(protocol, cache, out, manifest=list(manifest) or None, settings=settings)
    c = result.choice
    click.echo(
        f"trained on {result.n_samples} samples of {result.n_subjects} subjects "
        f"({', '.join(f'{k} {v}' for k, v in result.class_counts.items())}); {result.excluded} excluded"
    )
    click.echo(
        f"chosen by inner leave-subject-out: {c.feature_name}, SVM {c.params} (inner UF1 {c.inner_score:.3f})"
    )
    click.echo(f"wrote {result.bundle}")
    finish(
        result.excluded,
        f"of {result.n_samples + result.excluded} samples excluded (not prepared, or failed "
        f"in prepare: `microfer loso` lists them)",
    )


@click.command("predict")
@click.argument("clip", type=click.Path(path_type=Path))
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="bundle folder from `microfer train` (clips) or `microfer train-images` (face images); "
    "without it, face images go to the shipped image model (calibrated probabilities)",
)
@click.option(
    "--onset",
    type=int,
    default=None,
    help="onset frame (folder: number in the file name; video: index)",
)
@click.option(
    "--apex",
    type=int,
    default=None,
    help="apex frame (spotted when absent; a given apex is used as given, or refused when it is not inside onset..offset or the face is not there)",
)
@click.option("--offset", type=int, default=None, help="offset frame (spotted when absent)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the network"
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "onnx", "torch"]),
    default="auto",
    show_default=True,
    help="what runs the network: the bundle's ONNX export in onnxruntime (fast start, no torch), "
    "or torch; auto = onnx when the bundle has it",
)
@click.option(
    "--explain",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="write apex_face.png and flow.png here: occlusion-sensitivity overlays of where the "
    "decision came from (re-runs features + SVM per patch: slower)",
)
def predict_cmd(clip, model, onset, apex, offset, as_json, threads, runtime, explain):
    """Emotion of one CLIP (a video file or a folder of frames) with a clip bundle, or of a face
    image (or every image in a folder) with an image bundle -- or, without --model, with the
    shipped image model."""
    from microfer.errors import MicroferError
    from microfer.recognise.images import is_image_bundle

    if model is None:
        _predict_default_images(clip, onset, apex, offset, explain, as_json, threads)
        return
    if is_image_bundle(model):
        from microfer.recognise.images import ImagePredictor, predict_images

        given = [
            n
            for n, v in (
                ("--onset", onset),
                ("--apex", apex),
                ("--offset", offset),
                ("--explain", explain),
            )
            if v is not None
        ]
        if given:
            raise MicroferError(
                f"{model}: an image bundle predicts single images; {', '.join(given)} "
                f"belong to clips"
            )
        results = predict_images(clip, ImagePredictor(model, num_threads=threads, runtime=runtime))
        if as_json:
            docs = [r.to_dict() for r in results]
            click.echo(json.dumps(docs[0] if clip.is_file() else docs, indent=2))
        else:
            click.echo("\n".join(r.text() for r in results))
        return
    from microfer.clip.video import IMAGE_EXTENSIONS
    from microfer.recognise.predict import Predictor

    predictor = Predictor(model, num_threads=threads, runtime=runtime)
    if clip.is_file() and clip.suffix.lower() in IMAGE_EXTENSIONS:
        raise MicroferError(
            f"{clip}: a single image; {model} is a clip bundle (video or frame folder in); "
            f"images need an image bundle from `microfer train-images`"
        )
    result = predictor.predict(clip, onset=onset, apex=apex, offset=offset, explain=explain)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.text())


def _predict_default_images(path, onset, apex, offset, explain, as_json, threads):
    """No --model: face images (a file, or every image in a folder) -> the shipped image model.
    Clips need a clip bundle: there is no shipped clip model (ME classes depend on the data)."""
    from microfer.clip.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
    from microfer.errors import MicroferError
    from microfer.recognise.images import DefaultImagePredictor, predict_images

    given = [
        n
        for n, v in (
            ("--onset", onset),
            ("--apex", apex),
            ("--offset", offset),
            ("--explain", explain),
        )
        if v is not None
    ]
    is_video = path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS
    if given or is_video or (path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS):
        raise MicroferError(
            f"{path}: without --model only face images are predicted (the shipped image model); "
            f"a clip needs --model BUNDLE from `microfer train`"
        )
    if not path.exists():
        raise MicroferError(f"{path}: no such image or folder")
    results = predict_images(path, DefaultImagePredictor(num_threads=threads))
    if as_json:
        docs = [r.to_dict() for r in results]
        click.echo(json.dumps(docs[0] if path.is_file() else docs, indent=2))
    else:
        click.echo("\n".join(r.text() for r in results))


@click.command("train-images")
@click.option(
    "--images",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="FER-2013-layout folder: ROOT/train/<emotion>/*.jpg and ROOT/test/<emotion>/*.jpg",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="bundle folder to write",
)
@click.option(
    "--test-by-subject",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="CK+-layout folder (ROOT/<emotion>/S<subject>_...): its test subjects are scored too",
)
@click.option(
    "--per-class",
    type=click.IntRange(min=10),
    default=600,
    show_default=True,
    help="training images drawn per emotion (the SVM's cost grows with their square)",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="which images are drawn, and the inner folds",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the network"
)
@click.option(
    "--weights",
    default="default",
    show_default=True,
    metavar="default|PATH",
    help="the network: 'default' = the shipped macro trunk, or a `microfer pretrain --images` output "
    "(any backbone pretrained on still faces)",
)
@click.option("--quiet", is_flag=True, help="no progress bar")
def train_images_cmd(images, out, test_by_subject, per_class, seed, threads, weights, quiet):
    """Fit an SVM on a macro-pretrained network's features of aligned training faces and write an
    image bundle for `microfer predict IMAGE --model OUT` (7 basic emotions)."""
    import shlex
    import sys

    from microfer.learn.train_images import train_image_bundle

    command = " ".join(["microfer", *map(shlex.quote, sys.argv[1:])])
    r = train_image_bundle(
        images,
        out,
        test_by_subject=test_by_subject,
        per_class=per_class,
        seed=seed,
        num_threads=threads,
        progress=not quiet,
        command=command,
        weights=weights,
    )
    click.echo(
        f"trained on {r.n_train} images ({', '.join(f'{k} {v}' for k, v in r.class_counts.items())})"
    )
    click.echo(
        f"chosen by inner cross-validation: {r.features}, SVM {r.params} (inner macro F1 {r.inner_score:.3f})"
    )
    for name, m in r.test.items():
        click.echo(
            f"test {name}: {m['n']} images, accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}"
            f" (argmax over its own labels: {m['accuracy_own_labels']:.3f} / {m['macro_f1_own_labels']:.3f})"
            + (
                f"; {m['left_out_other_labels']} of other labels left out"
                if m["left_out_other_labels"]
                else ""
            )
        )
    click.echo(f"wrote {r.bundle}")


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("microfer-demo"),
    show_default=True,
    help="everything the demo writes goes here",
)
@click.option("--quick", is_flag=True, help="a smaller composite (for CI and a first look)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--faces",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="face photos to use instead of the shipped public-domain ones",
)
@click.option("--no-progress", is_flag=True)
def demo_cmd(out, quick, seed, faces, no_progress):
    """Run the whole pipeline on synthetic clips made from shipped faces: synth, prepare,
    LOSO on the MEGC2019 composite protocol, train a bundle, predict held-out videos."""
    from microfer.bench.demo import run_demo

    r = run_demo(
        out, quick=quick, seed=seed, faces=faces, echo=click.echo, progress=not no_progress
    )
    m = r.loso_metrics
    click.echo("")
    click.echo("LOSO (megc2019-composite, synthetic):")
    for name, s in (("model", m["pooled"]), ("majority baseline", m["majority"])):
        click.echo(
            f"  {name:<18} UF1 {s['uf1']:.3f}  UAR {s['uar']:.3f}  accuracy {s['accuracy']:.3f}"
        )
    click.echo("held-out videos (truth -> predicted with spotted frames / with true frames):")
    for p in r.predictions:
        click.echo(
            f"  {Path(p['video']).name}: {p['truth']} -> {p['predicted_spotted']} / {p['predicted_given']}"
            f"   apex true {p['apex_true']}, spotted {p['apex_spotted']}   {p['ms']:.0f} ms"
        )
    click.echo(f"report: {r.report_dir / 'report.md'} (+ confusion.png, per_subject.png)")
    click.echo(
        f"bundle: {r.bundle}    try: microfer predict {r.predictions[0]['video']} --model {r.bundle}"
    )
    click.echo("time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in r.seconds.items()))
