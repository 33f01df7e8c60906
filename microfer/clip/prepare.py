"""Prepare a dataset into the cache, and one clip with what was not given spotted.

`prepare_dataset` checks the dataset layout first (one report, `microfer.clip.layout`),
then prepares every clip not already in the cache (`microfer.clip.one_clip.prepare_clip`),
in parallel processes, saving each clip as it completes; a killed run resumes where it
stopped. Clips that fail are recorded with their reason and not retried unless asked.

`prepare_interval` is the spot-then-prepare policy that predict, serve and live share.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from microfer.clip.cache import Cache
from microfer.clip.face import landmark_model_path
from microfer.clip.landmarks import load as load_landmark_model
from microfer.clip.layout import (  # noqa: F401
    check_layout,
    inputs_fingerprint,
    layout_report,
    samples_of,
)
from microfer.clip.one_clip import (  # noqa: F401  (the clip API, importable from here too)
    PREPARE_VERSION,
    PrepareSettings,
    prepare_clip,
)
from microfer.clip.spot_then_prepare import PreparedInterval, prepare_interval  # noqa: F401
from microfer.clip.video import frames_for_sample
from microfer.errors import LayoutError, MicroferError
from microfer.io import write_text
from microfer.parallel import scheduler_context
from microfer.records import ClipFailure, Sample


@dataclass
class PrepareSummary:
    settings_key: str
    cache_dir: Path
    total: int = 0
    prepared: int = 0  # done in this run
    skipped: int = 0  # already in the cache (ok, or failed earlier)
    failed: list[ClipFailure] = field(default_factory=list)  # failed in this run
    layout: list[ClipFailure] = field(default_factory=list)  # skipped by the layout check
    earlier_failures: int = 0  # failed in an earlier run, not retried
    spotted: int = 0  # apexes spotted in this run
    changed: list[str] = field(default_factory=list)  # cached, but their inputs changed: redone
    seconds: float = 0.0
    clips_per_s_steady: float = 0.0  # prepared / time after the first clip completed
    layout_report_path: Path | None = None

    def text(self) -> str:
        lines = [
            f"prepare: {self.total} clips -> {self.cache_dir}",
            f"  prepared now: {self.prepared} (apex spotted: {self.spotted}) in {self.seconds:.1f} s",
            f"  already cached: {self.skipped}"
            + (
                f" (of which {self.earlier_failures} failed earlier; --retry-failed retries them)"
                if self.earlier_failures
                else ""
            ),
            f"  failed now: {len(self.failed)}",
        ]
        if self.changed:
            lines.append(
                f"  prepared again because their coding row or frames changed: "
                f"{len(self.changed)} ({', '.join(self.changed[:5])}"
                f"{', ...' if len(self.changed) > 5 else ''})"
            )
        lines += [f"    {f.key} [{f.stage}]: {f.reason}" for f in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"    ... {len(self.failed) - 20} more in {self.cache_dir / 'index.csv'}")
        if self.layout:
            lines.append(
                f"  skipped by the layout check: {len(self.layout)} (see {self.layout_report_path})"
            )
        return "\n".join(lines)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would fight them


def _prepare_sample(sample: Sample, root: Path, settings: PrepareSettings):
    """Worker: one sample -> (key, PreparedClip | ClipFailure). Never raises a MicroferError."""

    try:
        source = frames_for_sample(root, sample)
        return sample.key, prepare_clip(source, sample.onset, sample.apex, sample.offset, settings)
    except MicroferError as exc:
        return sample.key, ClipFailure(sample.key, getattr(exc, "stage", "frames"), str(exc))
    except Exception as exc:  # a library choking on a frame must not stop the dataset run
        return sample.key, ClipFailure(sample.key, "motion", f"{type(exc).__name__}: {exc}")


def _prepare_on_worker(sample: Sample, root: Path, settings: PrepareSettings):
    """_prepare_sample on a dask worker (one thread per worker process, like the local pool)."""
    _init_worker()
    return _prepare_sample(sample, root, settings)


def prepare_dataset(
    samples,
    root: Path,
    out: Path,
    settings: PrepareSettings = PrepareSettings(),
    workers: int = 1,
    strict: bool = False,
    progress: bool = True,
    retry_failed: bool = False,
    scheduler: str | None = None,
) -> PrepareSummary:
    """Prepare every sample of a manifest into the cache at `out` (see module docstring).

    `scheduler`: "local" or a dask scheduler address (microfer.parallel) to prepare the
    clips on a dask.distributed cluster instead of `workers` local processes; its workers
    must see `root` at the same path. Results are saved here, as each clip completes."""
    root, out = Path(root), Path(out)
    t_start = time.perf_counter()
    sample_list, unbounded = samples_of(samples)
    dupes = [k for k, n in Counter(s.key for s in sample_list).items() if n > 1]
    if dupes:
        raise MicroferError(
            f"the manifest lists {len(dupes)} clip(s) more than once: {', '.join(dupes[:5])}"
        )
    if not root.is_dir():  # one line, and no cache folder made for nothing
        raise LayoutError(f"{root}: the dataset root does not exist (or is not a folder)")
    cache = Cache.for_settings(out, settings)
    summary = PrepareSummary(settings.key(), cache.dir, total=len(sample_list) + len(unbounded))
    summary.layout = unbounded + check_layout(sample_list, root)
    if summary.layout:
        _report_layout(summary, out, strict)
    cache.sync_index()  # a killed run may have left entries the index does not list
    inputs = {s.key: inputs_fingerprint(root, s) for s in sample_list}
    bad = {p.key for p in summary.layout}
    todo = _still_to_do(sample_list, bad, cache, retry_failed, summary, inputs)
    sink = _Sink(cache, summary, todo, progress, inputs)
    if todo:
        # converts dlib's landmark file on the first run ever, here once, not in every worker
        load_landmark_model(landmark_model_path())
    try:
        if scheduler and todo:
            _run_on_dask(todo, root, settings, scheduler, sink)
        elif workers <= 1 or len(todo) <= 1:
            _init_worker()
            for s in todo:
                sink.handle(_prepare_sample(s, root, settings))
        else:
            _run_in_processes(todo, root, settings, workers, sink)
    finally:
        sink.close(t_start)
    return summary


def _report_layout(summary: PrepareSummary, out: Path, strict: bool) -> None:
    """Write the layout report (unless unchanged) and say so; LayoutError when `strict`."""
    report = layout_report(summary.layout, summary.total)
    summary.layout_report_path = out / "layout_report.txt"
    path = summary.layout_report_path
    if not (path.is_file() and path.read_text(encoding="utf-8") == report):
        write_text(path, report)  # a rerun on a finished cache writes nothing
    head = "\n".join(report.splitlines()[:11])
    if strict:
        raise LayoutError(f"{head}\nfull report: {path} (without --strict these clips are skipped)")
    print(f"{head}\nfull report: {path}; these clips are skipped", file=sys.stderr)


def _still_to_do(samples, bad: set, cache, retry_failed: bool, summary, inputs) -> list[Sample]:
    """The samples neither skipped by the layout check nor already in the cache (an entry
    or failure recorded from other inputs than today's does not count)."""
    todo = []
    for s in samples:
        if s.key in bad:
            continue
        done = cache.has(s) or cache.has_failed(s)
        recorded = cache.inputs(s) if done else ""
        if recorded and inputs[s.key] and recorded != inputs[s.key]:
            summary.changed.append(s.key)
            todo.append(s)
        elif cache.has(s):
            summary.skipped += 1
        elif cache.has_failed(s) and not retry_failed:
            summary.skipped += 1
            summary.earlier_failures += 1
        else:
            todo.append(s)
    return todo


class _Sink:
    """Saves each finished clip (or its failure) into the cache as it arrives, with a
    progress bar; the index is flushed every few seconds, so a killed run loses little."""

    def __init__(self, cache, summary: PrepareSummary, todo: list[Sample], progress: bool, inputs):
        from tqdm import tqdm

        self.cache, self.summary, self.inputs = cache, summary, inputs
        self.by_key = {s.key: s for s in todo}
        self.bar = tqdm(
            total=len(todo),
            desc="prepare",
            unit="clip",
            disable=not progress or None,
            file=sys.stderr,
        )
        self.first_done: float | None = None
        self.last_flush = time.perf_counter()

    def handle(self, result) -> None:
        key, value = result
        sample = self.by_key[key]
        if isinstance(value, ClipFailure):
            self.cache.record_failure(sample, value.stage, value.reason, self.inputs[key])
            self.summary.failed.append(value)
        else:
            self.cache.save(sample, value, self.inputs[key])
            self.summary.prepared += 1
            self.summary.spotted += value.apex_source == "spotted"
        self.bar.update(1)
        if self.first_done is None:
            self.first_done = time.perf_counter()
        if time.perf_counter() - self.last_flush > 5:
            self.cache.flush_index()
            self.last_flush = time.perf_counter()

    def close(self, t_start: float) -> None:
        self.bar.close()
        self.cache.flush_index()
        s = self.summary
        s.seconds = time.perf_counter() - t_start
        done = s.prepared + len(s.failed)
        if self.first_done is not None and done > 1:
            s.clips_per_s_steady = (done - 1) / max(1e-9, time.perf_counter() - self.first_done)


def _run_on_dask(todo, root, settings, scheduler: str, sink: _Sink) -> None:

    with scheduler_context(scheduler) as client:
        from distributed import as_completed as dask_completed

        futures = client.map(_prepare_on_worker, todo, root=root, settings=settings, pure=False)
        try:
            for fut in dask_completed(futures):
                sink.handle(fut.result())
        except BaseException:
            client.cancel(futures)
            raise


def _run_in_processes(todo, root, settings, workers: int, sink: _Sink) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: forking a process that has run OpenCV/dlib threads can hang.
    ctx = multiprocessing.get_context("spawn")
    done: set[str] = set()
    try:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_init_worker
        ) as pool:
            futures = [pool.submit(_prepare_sample, s, root, settings) for s in todo]
            try:
                for fut in as_completed(futures):
                    result = fut.result()
                    sink.handle(result)
                    done.add(result[0])
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    except BrokenProcessPool:
        # Worker processes re-import the caller's __main__ (spawn); from stdin or an
        # unguarded script that fails. Finish in this process rather than give up.
        print(
            "prepare: worker processes could not run (guard a calling script with "
            "`if __name__ == '__main__':`); continuing in one process",
            file=sys.stderr,
        )
        _init_worker()
        for s in todo:
            if s.key not in done:
                sink.handle(_prepare_sample(s, root, settings))
