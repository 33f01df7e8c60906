"""`microfer datasets` and `microfer manifest`: what each dataset expects, and its manifest."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import click

from microfer.cli import finish
from microfer.datasets import composite_inputs
from microfer.datasets.registry import get, names
from microfer.errors import MicroferError
from microfer.io import manifests_dir, write_csv


@click.command("datasets")
def datasets_cmd():
    """List the supported datasets: fps, default protocol and the layout each expects."""

    for name in names():
        a = get(name)
        click.echo(
            f"{a.name}  ({a.title}, {a.fps:g} fps, default protocol: {a.default_protocol or 'none'})"
        )
        for line in a.layout.splitlines():
            click.echo(f"    {line}")
        shipped = manifests_dir() / f"{name}.csv"
        if shipped.is_file():
            click.echo(
                f"    `microfer prepare {name}` without --coding/--manifest prepares the shipped manifest "
                f"{shipped.name};\n    the rules above are those of --coding and `microfer manifest {name}`."
            )
        click.echo("")

    click.echo(
        f"{composite_inputs.NAME}  (derived MEGC2019 composite inputs, `microfer prepare` only)"
    )
    for line in composite_inputs.LAYOUT.splitlines():
        click.echo(f"    {line}")
    click.echo("")
    click.echo(
        "Shipped manifests: data_manifests/*.csv "
        "(python -m microfer.datasets.build_manifests --annotations DIR --out data_manifests)"
    )


def _note_kind(note: str) -> str:
    """A note with its numbers and quoted values blanked, to count repairs by kind."""
    if re.match(r"^\w+=", note):
        return note  # key=value tags (type=macro) are kinds already
    note = re.sub(r"'[^']*'", "'…'", note)
    return re.sub(r"\d+", "N", note)


def summary(df) -> list[str]:
    """Human summary of a manifest table: sizes, emotions, missing apex, notes, dropped rows."""
    lines = [f"rows: {len(df)}", f"subjects: {df['subject'].nunique()}"]
    emotions = df["emotion"].value_counts()
    lines.append("emotions: " + ", ".join(f"{e} {n}" for e, n in emotions.items()))
    labels = df["label"].replace("", "(excluded)").value_counts()
    lines.append("labels: " + ", ".join(f"{e} {n}" for e, n in labels.items()))
    lines.append(f"apex null: {int(df['apex'].isna().sum())}")
    kinds = Counter(_note_kind(n) for notes in df["notes"] for n in str(notes).split(";") if n)
    lines.append(f"rows with notes: {int((df['notes'] != '').sum())}")
    for kind, n in kinds.most_common():
        lines.append(f"  {n:4d}  {kind}")
    dropped = df.attrs.get("dropped", [])
    lines.append(f"dropped rows: {len(dropped)}")
    for d in dropped:
        lines.append(f"  {d['key']}: {d['reason']}")
    return lines


@click.command("manifest")
@click.argument("dataset", type=click.Choice(names()))
@click.option(
    "--coding",
    type=click.Path(path_type=Path, dir_okay=False),
    help="the dataset's own coding file (see `microfer datasets`)",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    help="dataset root (SMIC without a coding file: clip folders are scanned)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="manifest csv to write",
)
def manifest_cmd(dataset: str, coding: Path | None, root: Path | None, out: Path):
    """Write the manifest of DATASET from its coding file (or SMIC folders) and summarise it."""

    adapter = get(dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped rows are printed below, with reasons
        df = adapter.read(coding, root)
    dropped = df.attrs.get("dropped", [])
    if df.empty:
        why = "; ".join(f"{d['key']}: {d['reason']}" for d in dropped[:3]) + (
            "; ..." if len(dropped) > 3 else ""
        )
        raise MicroferError(
            f"{coding or root}: no usable row for {dataset} "
            + (f"(all {len(dropped)} dropped: {why}); " if dropped else "")
            + f"{out} not written"
        )
    write_csv(out, df)
    click.echo(f"wrote {out}")
    for line in summary(df):
        click.echo(line)
    finish(len(dropped), f"of {len(df) + len(dropped)} coding rows dropped (listed above)")
