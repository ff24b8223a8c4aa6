"""The Prefect side of the webhook path: the receiver's event, and the apply it triggers.

`mailsync webhook serve` (mode `prefect`) hands `prefect_emitter()` to the receiver, which
calls it after committing a webhook's writes (one run in flight per location). The
`mailsync-apply` deployment's trigger in prefect.yaml expects this event and runs the apply
flow (`flows/apply.py`), whose task `apply_and_stay` applies the location's waiting rows and
stays a while for the webhooks that follow: starting a flow run costs seconds, a webhook
should not wait for one each time. It lives here because `src/mailsync/` never imports
Prefect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task

from mailsync.config import ConfigError
from mailsync.webhook.trigger import LOCATION_EVENT, LOCATION_RESOURCE_PREFIX
from tasks.sync import COMMON, _logger, one_line_failures


def location_event(location_id: str) -> dict[str, Any]:
    """The event's fields: its name, and the location as its resource (id and name)."""
    return {"event": LOCATION_EVENT,
            "resource": {"prefect.resource.id": LOCATION_RESOURCE_PREFIX + location_id,
                         "prefect.resource.name": location_id}}


def prefect_emitter() -> Callable[[str], None]:
    """A callable that emits the location's event to the Prefect API ($PREFECT_API_URL).

    `emit_event` queues the event for Prefect's background events worker and returns at
    once; it returns None (and sends nothing) when no API is configured, which is said here
    rather than lost. Without an API at all it refuses to start (a ConfigError).
    """
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ConfigError('[webhooks] mode = "prefect" needs PREFECT_API_URL: the Prefect '
                          "server's API, e.g. http://prefect-host:4200/api")

    def emit(location_id: str) -> None:
        if emit_event(**location_event(location_id)) is None:
            raise RuntimeError("Prefect did not take the event: is PREFECT_API_URL set?")

    return emit


# -- the apply a trigger runs: it stays a while for the webhooks that follow ----------------

LINGER_SECONDS = 20.0
"""How long an apply run stays after its last write, for the webhooks that follow."""
MAX_LINGER_SECONDS = 300.0
"""How long one run may stay at most: then the receiver starts the next."""
POLL_SECONDS = 0.5


def _waiting_rows(ctx: Any, opts: Any, location_id: str) -> int:
    """Rows the receiver has planned and nobody has sent: pending or unknown, not deferred
    for the daily quota (`failed` rows are the schedule's, with their attempt counts)."""
    from dataclasses import replace

    from mailsync.store import ledger
    from mailsync.store.models import OPEN_STATUSES

    return ledger.count_open(ctx.engine, replace(opts.selection(location_id),
                                                 statuses=OPEN_STATUSES))


def _stay(ctx: Any, location_id: str, opts: Any, *, linger: float, lease_wait: float
          ) -> tuple[dict[str, int], int, str | None]:
    """Apply the location's waiting rows, again as webhooks bring more, until none came for
    `linger` s. Between applies the run keeps the location's lease (which tells the
    receiver it is here). Returns (outcomes, calls, why it stopped early)."""
    import asyncio
    import time

    from mailsync.store.leases import acquire_lease, release_lease
    from mailsync.sync import runner
    from mailsync.sync.apply import Stop

    outcomes: dict[str, int] = {}
    calls, stopped = 0, None
    started = quiet_since = time.monotonic()
    try:
        while time.monotonic() - started < MAX_LINGER_SECONDS:
            if _waiting_rows(ctx, opts, location_id):
                result = asyncio.run(runner.apply(ctx, location_id, opts))
                if result.stopped == Stop.lease_held_elsewhere:
                    if not calls and time.monotonic() - started > lease_wait:
                        return outcomes, calls, result.stopped.value
                else:
                    quiet_since = time.monotonic()
                    calls += result.calls
                    for k, v in result.outcomes.items():
                        outcomes[str(k)] = outcomes.get(str(k), 0) + v
                    if result.stopped is not None:  # the daily quota, or a lost lease
                        return outcomes, calls, result.stopped.value
            if time.monotonic() - quiet_since > linger:
                break
            acquire_lease(ctx.engine, location_id, opts.holder)
            time.sleep(POLL_SECONDS)
    finally:
        release_lease(ctx.engine, location_id, opts.holder)
    return outcomes, calls, stopped


@task(name="apply-and-stay", task_run_name="apply-and-stay-{location_id}", **COMMON)
@one_line_failures
def apply_and_stay(config_path: str | None, location_id: str, *,
                   linger_seconds: float = LINGER_SECONDS,
                   lease_wait_seconds: float = 60.0) -> dict[str, Any]:
    """Apply one location's waiting writes under its lease, as the scheduled sync does, then
    again as webhooks bring more, until none came for `linger_seconds`. When another run
    holds the location (the schedule) for `lease_wait_seconds` with nothing applied here,
    leave the rows to it."""
    from mailsync.store.leases import worker_identity
    from mailsync.sync import runner
    from tasks.context import build_context

    ctx = build_context(config_path)
    opts = runner.apply_options(ctx, holder=worker_identity())
    outcomes, calls, stopped = _stay(ctx, location_id, opts, linger=linger_seconds,
                                     lease_wait=lease_wait_seconds)
    _logger().info("applied location=%s calls=%d outcomes=%s%s", location_id, calls,
                   outcomes, f" stopped: {stopped}" if stopped else "")
    return {"location_id": location_id, "outcomes": outcomes, "calls": calls,
            "stopped": stopped}
