"""The webhook receiver's announcement in `prefect` mode: a Prefect event per location.

`mailsync webhook serve` (mode `prefect`) hands `prefect_emitter()` to the receiver, which
calls it, debounced, after committing a webhook's writes. The `mailsync-apply` deployment's
trigger in prefect.yaml expects this event and runs the apply flow for the location named by
the event's resource. It lives here because `src/mailsync/` never imports Prefect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailsync.config import ConfigError
from mailsync.webhook.trigger import LOCATION_EVENT, LOCATION_RESOURCE_PREFIX


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
