"""What the flows share: the bounded task runner and collecting mapped results."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from mailsync.store.runs import ErrorKind, RunError, Scope
from mailsync.sync.runner import run_error

TASK_WORKERS = int(os.environ.get("MAILSYNC_TASK_WORKERS", "8"))
"""Threads per flow run. Prefect's default pool is unbounded; each thread is one campaign's
fetch or one location's apply, so this bounds open connections and store sessions too."""


def task_runner() -> ThreadPoolTaskRunner:
    """A thread pool with a bounded number of workers."""
    return ThreadPoolTaskRunner(max_workers=TASK_WORKERS)


def collect(futures: Sequence[PrefectFuture[Any]], names: Sequence[str],
            scope: Scope) -> tuple[list[Any], list[RunError]]:
    """Wait for every future; (results of those that completed, one error per failure).

    A failed campaign must not stop the others' writes from being applied, so failures are
    collected, not raised.
    """
    results: list[Any] = []
    errors: list[RunError] = []
    for name, fut in zip(names, futures, strict=True):
        fut.wait()
        state = fut.state
        if state.is_completed():
            results.append(fut.result())
        else:
            exc = fut.result(raise_on_failure=False)
            errors.append(run_error(scope, name, exc) if isinstance(exc, BaseException) else
                          RunError(scope, name, ErrorKind.internal, state.message or "crashed"))
    return results, errors
