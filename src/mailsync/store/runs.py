"""What a run records about itself: the errors that stopped a campaign or a location.

Stored in `sync_runs.counts` and read back by the report, so they are typed values with
fields (scope, kind, HTTP status), never sentences to parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    """What a run error stopped: one campaign's fetch or one location's apply."""

    campaign = "campaign"
    location = "location"


class ErrorKind(StrEnum):
    """What kind of failure stopped a campaign or location: the report acts on this."""

    credentials = "credentials"
    """The API refused the location's token or the Postalytics key."""
    unreachable = "unreachable"
    config = "config"
    store = "store"
    """The store failed (unreachable, read-only, full) while the campaign or location ran."""
    remote = "remote"
    internal = "internal"


@dataclass(frozen=True)
class RunError:
    """A campaign or location a run could not finish, with its kind and HTTP status."""

    scope: Scope
    target: str
    kind: ErrorKind
    message: str
    http_status: int | None = None

    def __str__(self) -> str:
        # The clients' messages already name what failed ("location Boston (loc-1): ...").
        if self.target in self.message:
            return self.message
        return f"{self.scope} {self.target}: {self.message}"
