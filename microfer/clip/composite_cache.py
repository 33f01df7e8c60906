"""The circulated composite inputs (`microfer.datasets.composite_inputs`) written as
prepare-cache entries, so `loso` reads them like clips that `prepare` made from frames.

Resumable like `prepare`: an identical entry, or the same failure, is left untouched;
a changed source rewrites its entry; an entry whose source went bad is removed.
"""

from __future__ import annotations

import sys
import time

from microfer.clip.cache import Cache
from microfer.datasets.composite_inputs import (
    NAME,
    CompositeSettings,
    CompositeSummary,
    RowProblem,
    load_row,
    read_table,
    same_entry,
)
from microfer.errors import ClipError, MicroferError


def prepare_cache(
    root,
    out,
    manifest=None,
    settings: CompositeSettings = CompositeSettings(),
    progress: bool = False,
) -> CompositeSummary:
    """Read `root` (see module docstring) into the prepare cache at `out`; see `CompositeSummary`."""
    t0 = time.perf_counter()
    table = read_table(root, manifest)
    cache = Cache.for_settings(out, settings)
    summary = CompositeSummary(
        settings.key(), cache.dir, csv_rows=len(table.rows) + len(table.problems)
    )
    cache.sync_index()  # a killed run may have left entries the index does not list

    def fail(problem: RowProblem) -> None:
        summary.failed.append(problem)
        # an entry its source no longer backs must not be evaluated
        cache.entry_path(problem.key).unlink(missing_ok=True)
        old = cache.failure(problem.key)
        if old is None or (old.get("stage"), old.get("reason")) != (problem.stage, problem.reason):
            cache.record_failure(problem.key, problem.stage, problem.reason)

    for p in table.problems:
        if p.key:
            fail(p)
        else:
            summary.unmatched.append(p)
    from tqdm import tqdm

    for row in tqdm(
        table.rows,
        desc=f"prepare {NAME}",
        unit="clip",
        disable=not progress or None,
        file=sys.stderr,
    ):
        try:
            clip = load_row(table.root, row)
        except ClipError as exc:
            fail(
                RowProblem(
                    row.line, row.key, "inputs", getattr(exc, "kind", "unreadable"), str(exc)
                )
            )
            continue
        if cache.has(row.key):
            try:
                if same_entry(cache.load(row.key), clip):
                    summary.unchanged += 1
                    continue
            except MicroferError:
                pass  # an unreadable entry is rewritten below
        cache.save(row.key, clip)
        summary.written += 1
    cache.flush_index()
    summary.seconds = time.perf_counter() - t0
    return summary
