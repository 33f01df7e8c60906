"""`microfer prepare`: align faces, pick onset/apex, compute motion, into a resumable cache."""

from __future__ import annotations

from pathlib import Path

import click

from microfer.cli import finish
from microfer.cli.options import SCHEDULER_OPTION
from microfer.errors import MicroferError
from microfer.io import manifests_dir


def load_samples(dataset: str, root: Path | None, coding: Path | None, manifest: Path | None):
    """(samples table, where it came from): --manifest, else the coding file, else the
    shipped manifest, else (SMIC) the clip folders under --root."""
    from microfer import datasets

    if manifest is not None:
        df = datasets.read_manifest(manifest)
        return (
            df[df["dataset"] == dataset] if dataset in set(df["dataset"]) else df
        ), f"manifest {manifest}"
    shipped = manifests_dir() / f"{dataset}.csv"
    if coding is None and shipped.is_file():
        return datasets.read_manifest(
            shipped
        ), f"the shipped manifest {shipped} (give --coding to use your file)"
    adapter = datasets.get(dataset)
    if coding is not None or not adapter.coding_required:
        source = f"coding file {coding}" if coding is not None else f"the clip folders under {root}"
        return adapter.read(coding, root=root), source
    raise MicroferError(
        f"no sample list for '{dataset}': give --coding (the dataset's coding file) "
        f"or --manifest (a manifest CSV)"
    )


@click.command("prepare")
@click.argument("dataset")
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Dataset folder (the one the manifest's frame_template paths start from).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Cache folder; results go to OUT/<settings key>/.",
)
@click.option(
    "--coding",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The dataset's official coding file (default: the shipped manifest).",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A manifest CSV instead of the coding file.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Processes preparing clips in parallel.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Stop when the layout check finds a problem (default: skip those clips).",
)
@click.option(
    "--size",
    type=click.IntRange(32, 1024),
    default=128,
    show_default=True,
    help="Aligned face side, px.",
)
@click.option(
    "--flow",
    type=click.Choice(["dis", "tvl1"]),
    default="dis",
    show_default=True,
    help="Optical flow method onset->apex.",
)
@click.option(
    "--flow-format",
    type=click.Choice(["pixels", "minmax28"]),
    default="pixels",
    show_default=True,
    help="pixels: flow and strain at the face size, in pixels. minmax28: the circulated "
    "STSTNet representation (28x28 u, v, strain, min-max per image; use with --flow tvl1), "
    "what a bundle trained on `composite_inputs` reads (docs/circulated-inputs.md).",
)
@click.option(
    "--spot",
    "spot_method",
    type=click.Choice(["fd", "diff", "flow"]),
    default="fd",
    show_default=True,
    help="Apex spotting measure when the apex is not annotated.",
)
@click.option("--retry-failed", is_flag=True, help="Try again clips that failed in an earlier run.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@SCHEDULER_OPTION
def prepare_cmd(dataset, root, out, coding, manifest, no_progress, **settings):
    """Prepare DATASET's clips: aligned onset/apex faces, optical flow and strain, cached.

    Re-running with the same settings does no work; an interrupted run resumes.
    DATASET `composite_inputs` reads the circulated derived MEGC2019 composite inputs
    (apex crops + flow images, see `microfer datasets`) into entries of the composite
    manifest (--manifest replaces it); the face/flow options do not apply to it.
    """
    from microfer.datasets import composite_inputs

    if dataset == composite_inputs.NAME:
        return _prepare_composite(dataset, root, out, coding, manifest, no_progress)
    from microfer.clip.prepare import PrepareSettings, prepare_dataset

    samples, source = load_samples(dataset, root, coding, manifest)
    click.echo(f"{dataset}: {len(samples)} samples from {source}")
    options = {k: settings.pop(k) for k in ("workers", "strict", "retry_failed", "scheduler")}
    summary = prepare_dataset(
        samples, root, out, PrepareSettings(**settings), progress=not no_progress, **options
    )
    click.echo(summary.text())
    failed = len(summary.failed) + len(summary.layout) + summary.earlier_failures
    _finish(
        summary.prepared + summary.skipped - summary.earlier_failures,
        summary.total,
        failed,
        f"of {summary.total} clips failed or were skipped",
        summary.cache_dir,
    )


def _prepare_composite(dataset, root, out, coding, manifest, no_progress) -> None:
    from microfer.clip import composite_cache

    if coding is not None:
        raise MicroferError(
            f"--coding {coding}: {dataset} reads its own csv under --root; "
            f"give --manifest to match against another composite manifest"
        )
    summary = composite_cache.prepare_cache(root, out, manifest, progress=not no_progress)
    click.echo(summary.text())
    _finish(
        summary.ok,
        summary.ok + len(summary.failed),
        len(summary.failed) + len(summary.unmatched),
        f"problem(s): {len(summary.failed)} manifest sample(s) failed, "
        f"{len(summary.unmatched)} csv row(s) not used",
        summary.cache_dir,
    )


def _finish(usable: int, total: int, problems: int, what: str, cache_dir: Path) -> None:
    """Exit 2 when no clip of the dataset is in the cache, 3 when some are missing, else 0."""

    if usable == 0:
        raise MicroferError(
            f"prepare: none of the {total} clip(s) is prepared in {cache_dir} "
            f"(every one failed or was skipped: reasons above)"
        )
    finish(problems, what + " (listed above)")
