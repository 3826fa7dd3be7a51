"""Engines and models, applied at the same time.

A model's batch is decoded, joined and turned into block deltas in the native core without the GIL
(docs/native.md), and neither the models of an engine nor the worker's partition engines share any
state, so on a machine with more than one core each runs as a task of its own. Python parts of a task
still take turns on the GIL; figures do not depend on which thread ran what.

`MLMON_APPLY_THREADS` sets the number of threads (default: the machine's cores, at most 4; 1 applies
the models one after the other on the calling thread).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_PREFIX = "mlmon-apply"
_FOLD_PREFIX = "mlmon-fold"
_pool: ThreadPoolExecutor | None = None
_folds: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def threads() -> int:
    value = os.environ.get("MLMON_APPLY_THREADS", "")
    if value.strip().isdigit():
        return max(1, int(value))
    return min(os.cpu_count() or 1, 4)


def run_all(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Runs every task (the calling thread takes the first) and returns their results in task order once
    all have ended. The first failure, in task order, is raised after the others have finished, so no
    task is left running."""
    n = threads()
    if len(tasks) < 2 or n < 2 or threading.current_thread().name.startswith(_PREFIX):
        # Within a task already (nested), the pool's threads are busy: waiting on them could deadlock.
        return [task() for task in tasks]
    pool = _executor(n - 1)
    futures: list[Future[T]] = [pool.submit(task) for task in tasks[1:]]
    failure: BaseException | None = None
    results: list[T] = []
    try:
        results.append(tasks[0]())
    except BaseException as exc:  # re-raised below, once the other tasks are done
        failure = exc
    for future in futures:
        exc = future.exception()
        if exc is None:
            results.append(future.result())
        elif failure is None:
            failure = exc
    if failure is not None:
        raise failure
    return results


def folds() -> ThreadPoolExecutor:
    """The process-wide pool that folds a model's applied batch into its window blocks while the model's
    next batch is applied (`Engine.apply_batches`). Apart from the model tasks' pool, so a fold never
    waits behind another model's whole task; each model has at most one fold in flight."""
    global _folds
    with _lock:
        if _folds is None:
            _folds = ThreadPoolExecutor(max_workers=4, thread_name_prefix=_FOLD_PREFIX)
        return _folds


def _executor(workers: int) -> ThreadPoolExecutor:
    """One pool for the process: a worker holds an engine per partition, and they take turns anyway."""
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers != workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=_PREFIX)
        return _pool
