"""Regenerate data_manifests/*.csv from the official coding files.

    python -m microfer.datasets.build_manifests --annotations DIR --out data_manifests

DIR holds the files as distributed, one folder per dataset:
  CASME2/CASME2-coding-20140508.xlsx            -> casme2.csv (the coding the published 5-class
                                                   results and the MEGC2019 list use)
  SAMM/SAMM_Micro_FACS_Codes_v2.xlsx            -> samm.csv
  SMIC/SMIC-HS-E_annotation_orig.xlsx           -> smic_hs.csv (sheet HS), smic_vis.csv (sheet VIS)
  CASME_sq/CAS(ME)^2code_final(Updated).csv     -> casme_sq.csv
  MEGC2019/combined_3class_gt.csv               -> megc2019_composite.csv (joined with the above)
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

from microfer.datasets import megc2019
from microfer.datasets.registry import get
from microfer.errors import MicroferError
from microfer.io import write_csv

SOURCES = {
    "casme2": "CASME2/CASME2-coding-20140508.xlsx",
    "samm": "SAMM/SAMM_Micro_FACS_Codes_v2.xlsx",
    "smic_hs": "SMIC/SMIC-HS-E_annotation_orig.xlsx",
    "smic_vis": "SMIC/SMIC-HS-E_annotation_orig.xlsx",
    "casme_sq": "CASME_sq/CAS(ME)^2code_final(Updated).csv",
}
COMPOSITE_GT = "MEGC2019/combined_3class_gt.csv"


def build_all(annotations: Path) -> dict[str, pd.DataFrame]:
    """{manifest name: table} for every shipped manifest, read from `annotations`."""
    annotations = Path(annotations)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped rows are listed in attrs, printed by main()
        for name, rel in SOURCES.items():
            out[name] = get(name).read(annotations / rel)
    out[megc2019.NAME] = megc2019.build(
        annotations / COMPOSITE_GT, {k: out[k] for k in ("casme2", "samm", "smic_hs")}
    )
    return out


def write_all(annotations: Path, out_dir: Path) -> dict[str, pd.DataFrame]:
    tables = build_all(annotations)
    for name, df in tables.items():
        write_csv(Path(out_dir) / f"{name}.csv", df)
    return tables


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m microfer.datasets.build_manifests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--annotations", type=Path, required=True, help="folder of the official coding files"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (data_manifests)")
    args = parser.parse_args(argv)
    try:
        tables = write_all(args.annotations, args.out)
    except MicroferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, df in tables.items():
        dropped = df.attrs.get("dropped", [])
        print(
            f"{args.out / (name + '.csv')}: {len(df)} rows, {df['subject'].nunique()} subjects, "
            f"{int(df['apex'].isna().sum())} without apex, {len(dropped)} dropped"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
