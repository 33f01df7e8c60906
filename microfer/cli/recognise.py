"""`microfer predict` (the emotion of a clip or of face images) and `microfer serve` (the
local web page)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from microfer.cli import finish
from microfer.errors import MicroferError
from microfer.recognise.images import (
    DefaultImagePredictor,
    ImagePredictor,
    is_image_bundle,
    predict_images,
)
from microfer.recognise.serve import make_server


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

    if model is None:
        _predict_default_images(clip, onset, apex, offset, explain, as_json, threads)
        return

    if is_image_bundle(model):
        given = _clip_options(onset, apex, offset, explain)
        if given:
            raise MicroferError(
                f"{model}: an image bundle predicts single images; {', '.join(given)} "
                f"belong to clips"
            )
        _show_images(clip, ImagePredictor(model, num_threads=threads, runtime=runtime), as_json)
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


def _clip_options(onset, apex, offset, explain) -> list[str]:
    """The options given that only clips take (an image has no onset, apex or motion map)."""
    named = (("--onset", onset), ("--apex", apex), ("--offset", offset), ("--explain", explain))
    return [n for n, v in named if v is not None]


def _predict_default_images(path, onset, apex, offset, explain, as_json, threads):
    """No --model: face images (a file, or every image in a folder) -> the shipped image model.
    Clips need a clip bundle: there is no shipped clip model (ME classes depend on the data)."""
    from microfer.clip.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    given = _clip_options(onset, apex, offset, explain)
    is_video = path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS
    if given or is_video or (path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS):
        raise MicroferError(
            f"{path}: without --model only face images are predicted (the shipped image model); "
            f"a clip needs --model BUNDLE from `microfer train`"
        )
    if not path.exists():
        raise MicroferError(f"{path}: no such image or folder")
    _show_images(path, DefaultImagePredictor(num_threads=threads), as_json)


def _show_images(path: Path, predictor, as_json: bool) -> None:
    """Predict an image or a folder of them; a folder's bad images are listed, the rest
    answered (exit 3), and nothing usable is an error (exit 2)."""
    failures: list = []
    results = predict_images(path, predictor, failures=failures if path.is_dir() else None)
    for image, reason in failures:
        click.echo(f"warning: {image.name}: {reason}", err=True)
    if not results:
        raise MicroferError(f"{path}: none of its {len(failures)} image(s) could be predicted")
    if as_json:
        docs = [r.to_dict() for r in results]
        click.echo(json.dumps(docs[0] if path.is_file() else docs, indent=2))
    else:
        click.echo("\n".join(r.text() for r in results))
    finish(len(failures), f"of {len(failures) + len(results)} images could not be predicted")


@click.command("serve")
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    required=True,
    help="bundle folder from `microfer train`",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on (0.0.0.0 also serves other machines: the page has no login)",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="0 = any free port",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the network"
)
@click.option("--verbose", is_flag=True, help="log every request")
def serve_cmd(model, host, port, threads, verbose):
    """A local web page: upload a clip, see its emotion, the scores and the motion curve
    with onset, apex and offset (POST /api/predict also takes face images: the shipped image
    model answers with calibrated probabilities). Stop it with Ctrl+C."""

    server = make_server(model, host=host, port=port, verbose=verbose, num_threads=threads)
    click.echo(f"microfer serving {model} at {server.url}  (Ctrl+C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
