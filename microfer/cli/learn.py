"""`microfer loso` (leave-one-subject-out evaluation), `microfer train` (a clip bundle) and
`microfer train-images` (an image bundle)."""

from __future__ import annotations

from pathlib import Path

import click

from microfer.cli import finish
from microfer.cli.options import (
    CACHE_OPTION,
    FEATURES_OPTION,
    GRID_OPTION,
    MANIFESTS_OPTION,
    PROTOCOL_OPTION,
    SCHEDULER_OPTION,
    WEIGHTS_OPTION,
    jobs_option,
)
from microfer.learn.report import write_report
from microfer.learn.train import train_bundle
from microfer.learn.train_images import train_image_bundle
from microfer.models import resolve_weights


@click.command("loso")
@PROTOCOL_OPTION
@CACHE_OPTION
@MANIFESTS_OPTION
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="report folder: results.json, report.md, confusion.png, per_subject.png, reliability.png",
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
    _show_loso(result)
    ex = result.metrics["excluded"]
    if out is not None:
        paths = write_report(result, out)
        click.echo(f"wrote {paths['results']}, {paths['report']}")
    finish(ex["count"], f"of {ex['of']} samples excluded (reasons above)")


def _show_loso(result) -> None:
    """The printed summary of a LOSO run: pooled, majority, per dataset, permutations, time."""
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
    boot = m.get("bootstrap")
    if boot:
        click.echo(
            f"{'  95% interval':<20}UF1 {boot['uf1'][0]:.4f}-{boot['uf1'][1]:.4f}  "
            f"UAR {boot['uar'][0]:.4f}-{boot['uar'][1]:.4f}  "
            f"(bootstrap over subjects, {boot['n_boot']} resamples)"
        )
    for half in ("A", "B"):
        if m.get("halves", {}).get(half, {}).get("n"):
            click.echo(line(f"  subject half {half}", m["halves"][half]))
    click.echo(line("majority baseline", m["majority"]))
    for ds, v in m.get("per_dataset", {}).items():
        click.echo(line(f"  {ds}", v["model"]))
    cal = m.get("calibration")
    if cal:
        click.echo(
            f"{'probabilities':<20}Brier {cal['brier']:.4f}  ECE {cal['ece']:.4f}  "
            f"(calibrated in-fold, {cal['n']} clips; reliability.png)"
        )
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


@click.command("train")
@PROTOCOL_OPTION
@CACHE_OPTION
@MANIFESTS_OPTION
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
