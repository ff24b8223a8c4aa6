"""What the flows share: the bounded task runner and collecting mapped results."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from mailsync.store.runs import ErrorKind, RunError, Scope
from mailsync.sync.runner import ErrorGroup, grouped_errors, run_error
from tasks.artifacts import RunArtifacts, publish

T = TypeVar("T")

TASK_WORKERS = int(os.environ.get("MAILSYNC_TASK_WORKERS", "8"))
"""Threads per flow run. Prefect's default pool is unbounded; each thread is one campaign's
fetch or one location's apply, so this bounds open connections and store sessions too."""


def task_runner() -> ThreadPoolTaskRunner:
    """A thread pool with a bounded number of workers."""
    return ThreadPoolTaskRunner(max_workers=TASK_WORKERS)


class RunFailed(Exception):
    """Raised by a flow after its summary is published: the run failed, and why, one line
    per distinct cause (one API down stops every campaign alike: told once)."""

    def __init__(self, errors: Sequence[RunError]) -> None:
        self.errors = list(errors)
        super().__init__(f"{len(self.errors)} step(s) failed: " + "; ".join(
            _group_line(g) for g in grouped_errors(self.errors)))


def _group_line(group: ErrorGroup) -> str:
    if len(group.targets) == 1 and group.targets[0] in group.message:
        return group.message
    return f"{group.scope} {', '.join(group.targets)}: {group.message}"


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


async def in_thread(body: Callable[..., T], *args: Any) -> T:
    """Run a flow's synchronous body (its tasks and futures) in a worker thread.

    The flows are async because after a sync flow completes, Prefect's engine waits up to a
    second for its heartbeat thread (bench/RESULTS.md, section 5). In the thread, Prefect's
    own functions still see an async flow run and return coroutines: a body calls tasks
    only, and the flow awaits `finish` for its artifacts.
    """
    return await asyncio.to_thread(body, *args)


async def finish(artifacts: RunArtifacts, errors: Sequence[RunError]) -> dict[str, Any]:
    """Publish the run's artifacts (the flow run's own), then fail the run if a step failed:
    the run shows as failed, with its summary saying why."""
    out = await publish(artifacts)
    if errors:
        raise RunFailed(errors)
    return out
