"""Reading the raw rows of a coding file: .xlsx or .csv, header search, one table.

Rules H (header row), F (formulas read as cached values) and E (unreadable files) of
`_coding`, whose docstring lists every rule; `_coding` imports these names, so the
adapters find them there.
"""

from __future__ import annotations

import csv
import math
import re
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from microfer.errors import AnnotationError

HEADER_SEARCH_ROWS = 60
EXCEL_SUFFIXES = (".xlsx", ".xlsm")
CSV_SUFFIXES = (".csv", ".txt")


def norm_name(value: Any) -> str:
    """Column-name key: stripped, inner whitespace collapsed, case-folded."""
    if value is None:
        return ""
    return re.sub(r"\s+", " ", str(value)).strip().casefold()


def norm_text(value: Any) -> str:
    """A text cell as a clean string ('' for empty/NaN); integral floats lose their '.0'."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


# ---------------------------------------------------------------- reading raw rows


def check_file(path: Path, what: str, expected: Sequence[str]) -> None:
    if not path.exists():
        raise AnnotationError(
            f"{what} file {path} does not exist (expected columns: {', '.join(expected)})"
        )
    if path.is_dir():
        raise AnnotationError(
            f"{what} file {path} is a folder, expected a coding file with columns: "
            f"{', '.join(expected)}"
        )
    if path.stat().st_size == 0:
        raise AnnotationError(
            f"{what} file {path} is empty (0 bytes); expected a coding file with columns: "
            f"{', '.join(expected)}"
        )


def excel_sheets(path: Path, what: str, expected: Sequence[str]) -> dict[str, list[list[Any]]]:
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        # data_only: formulas read as the values Excel cached (rule F).
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError, ValueError) as exc:
        raise AnnotationError(
            f"{what} file {path} is not a readable .xlsx workbook ({exc.__class__.__name__}); "
            f"expected columns: {', '.join(expected)}"
        ) from None
    try:
        return {ws.title: [list(r) for r in ws.iter_rows(values_only=True)] for ws in wb.worksheets}
    finally:
        wb.close()


def csv_rows(path: Path) -> list[list[Any]]:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    return [list(r) for r in csv.reader(text.splitlines())]


def read_sheets(path: Path, what: str, expected: Sequence[str]) -> dict[str, list[list[Any]]]:
    """{sheet name: rows of raw cell values}; a .csv file is one sheet named after the file."""
    path = Path(path)
    check_file(path, what, expected)
    suffix = path.suffix.lower()
    if suffix in EXCEL_SUFFIXES:
        return excel_sheets(path, what, expected)
    if suffix in CSV_SUFFIXES:
        return {path.stem: csv_rows(path)}
    hint = " (old .xls: re-save it as .xlsx)" if suffix == ".xls" else ""
    raise AnnotationError(
        f"{what} file {path} is not an .xlsx or .csv file{hint}; "
        f"expected columns: {', '.join(expected)}"
    )


def find_header(
    rows: Sequence[Sequence[Any]], required: Sequence[str]
) -> Optional[tuple[int, dict[str, int]]]:
    """(row index, {name key: column index}) of the first row holding all `required` names (rule H)."""
    keys = [norm_name(r) for r in required]
    for i, row in enumerate(rows[:HEADER_SEARCH_ROWS]):
        names: dict[str, int] = {}
        for j, cell in enumerate(row):
            names.setdefault(norm_name(cell), j)
        if all(k in names for k in keys):
            return i, names
    return None


def read_table(
    path: Path,
    required: Sequence[str],
    *,
    optional: Sequence[str] = (),
    sheet: Optional[str] = None,
    what: str = "coding",
) -> pd.DataFrame:
    """The rows below the header of `path` as an object DataFrame.

    Columns are `required` + the `optional` names present (spelled as given here), plus
    `_row` (1-based row number in the file, for messages). `sheet` picks a worksheet
    (case-insensitive; ignored for a .csv copy); without it the first sheet holding the
    header is used. Rows whose required cells are all empty are skipped.
    """
    path = Path(path)
    expected = list(required)
    sheets = read_sheets(path, what, expected)
    if (
        sheet is not None and path.suffix.lower() not in CSV_SUFFIXES
    ):  # a csv copy is that one sheet
        match = [name for name in sheets if norm_name(name) == norm_name(sheet)]
        if not match:
            raise AnnotationError(
                f"{what} file {path} has no sheet '{sheet}' (sheets: {', '.join(sheets)})"
            )
        candidates = {match[0]: sheets[match[0]]}
    else:
        candidates = sheets
    for name, rows in candidates.items():
        found = find_header(rows, required)
        if found is None:
            continue
        h, names = found
        wanted = list(required) + [o for o in optional if norm_name(o) in names]
        cols = {w: names[norm_name(w)] for w in wanted}
        records = []
        for i, row in enumerate(rows[h + 1 :], start=h + 2):
            cells = {w: (row[j] if j < len(row) else None) for w, j in cols.items()}
            if all(norm_text(cells[r]) == "" for r in required):
                continue
            cells["_row"] = i
            records.append(cells)
        df = pd.DataFrame.from_records(records, columns=wanted + ["_row"])
        return df.astype(object)
    where = f"sheet '{sheet}'" if sheet is not None else "any sheet"
    raise AnnotationError(
        f"{what} file {path}: no header row with the expected columns "
        f"{', '.join(expected)} in the first {HEADER_SEARCH_ROWS} rows of {where}"
    )
