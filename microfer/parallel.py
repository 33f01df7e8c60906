"""Running clips, folds and permutations on a dask.distributed cluster (`--scheduler`).

`scheduler_context(None)` changes nothing (and imports no dask). Given "local" (a
LocalCluster of 2 worker processes, one thread each, on this machine) or the address of
a running scheduler ("tcp://HOST:8786", see docs/speed.md, "Scaling out"), it connects a
`dask.distributed.Client` and, inside the `with`, sends every joblib `Parallel` of
microfer (LOSO folds, permutations) to it through joblib's dask backend; it yields the
Client (prepare submits its clips to it directly). joblib returns results in task order,
and every task is deterministic, so the numbers are those of a local run.

Workers need microfer installed (the same version) and must see the same paths: the
dataset root for `prepare`, the prepare cache for `loso` (shared storage).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from microfer.errors import MicroferError

LOCAL = "local"
LOCAL_WORKERS = 2


def _import_distributed():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise MicroferError(
            "--scheduler needs dask.distributed: pip install 'microfer[dask]' "
            "(or pip install 'dask[distributed]')"
        ) from None
    return distributed


@contextlib.contextmanager
def scheduler_context(address: Optional[str]) -> Iterator[Optional[object]]:
    """None: nothing (yields None). "local" or a scheduler address: a connected
    dask.distributed Client (yielded), with joblib's backend set to it."""
    if not address:
        yield None
        return
    distributed = _import_distributed()
    import joblib

    with contextlib.ExitStack() as stack:
        if address == LOCAL:
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=LOCAL_WORKERS,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
            )
            client = stack.enter_context(distributed.Client(cluster))
        else:
            try:
                client = stack.enter_context(distributed.Client(address, timeout="30s"))
            except (OSError, TimeoutError, ValueError) as exc:
                raise MicroferError(
                    f"--scheduler {address}: cannot connect to a dask scheduler there ({exc})"
                ) from None
        stack.enter_context(joblib.parallel_config(backend="dask"))
        yield client


def jobs_for(address: Optional[str], n_jobs: int) -> int:
    """n_jobs for a joblib Parallel: the caller's locally, all workers (-1) on a cluster
    (joblib runs n_jobs=1 in this process whatever the backend)."""
    return -1 if address else n_jobs
