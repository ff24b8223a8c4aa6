"""Expected failures as typed values: what kind (config, store, remote API), and one line.

The CLI turns a `Failure` into its message and exit code, the Prefect tasks into the failed
task's message, the runner into a `RunError`. Every exception a person can act on is named
here once; anything else is unexpected (a bug), and only then is a traceback worth showing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import httpx

from mailsync.clients.auth import AuthError, RefreshFailure, TokenRefreshError
from mailsync.clients.highlevel import HighLevelAuthError, HighLevelError
from mailsync.clients.messages import one_line, transport_problem
from mailsync.clients.postalytics import PostalyticsError, PostalyticsFailure
from mailsync.codes import UnknownEventLabel
from mailsync.config import ConfigError
from mailsync.redact import redact
from mailsync.store.errors import StoreError, StoreProblem

LINE_CAP = 600
"""The longest line a failure is shown as (a client's reason is at most 400 of it)."""


class FailureKind(StrEnum):
    """Which part failed: decides the CLI's exit code and the run error's kind."""

    config = "config"
    """The configuration, a secret it names, or a command's input."""
    store = "store"
    """The database: unreachable, refused, read-only, full, not migrated."""
    remote = "remote"
    """Postalytics or HighLevel: unreachable, or refused the credentials."""


class RemoteProblem(StrEnum):
    """How a remote API failed, where it matters to the caller."""

    unreachable = "unreachable"
    credentials = "credentials"
    other = "other"


@dataclass(frozen=True)
class Failure:
    """An expected failure: its kind, one line saying what failed, why and what to do, and
    for an API that could not be reached, which (service, host) so it is told once."""

    kind: FailureKind
    line: str
    remote: RemoteProblem | None = None
    endpoint: str | None = None
    """`Postalytics at api.postalytics.com:443` when an API was unreachable, else None."""
    transient: bool = False
    """Whether trying again soon may succeed (a server down, a lock held), unlike a bad
    config, refused credentials or a read-only store, which wait for a person."""


def _line(exc: BaseException) -> str:
    return one_line(redact(str(exc) or type(exc).__name__), LINE_CAP)


UNREACHABLE_ADVICE = {
    "Postalytics": "check the network, and [postalytics] base_url (or MAILSYNC_POSTALYTICS_URL)",
    "HighLevel": "check the network, and [highlevel] base_url (or MAILSYNC_HIGHLEVEL_URL)",
}


def unreachable_line(service: str, reason: str) -> str:
    """`cannot reach Postalytics at host:443: connection refused (...): check ...`: the
    same words for every campaign it stopped, so the run tells it once."""
    return one_line(f"{reason}: {UNREACHABLE_ADVICE[service]}", LINE_CAP)


def _postalytics(exc: PostalyticsError) -> Failure:
    if exc.kind is PostalyticsFailure.unreachable:
        where = f"Postalytics at {exc.host}" if exc.host else "Postalytics"
        # The outcome's reason names the host, not the campaign's path: one line for all.
        reason = exc.outcome.reason if exc.outcome is not None else str(exc)
        return Failure(FailureKind.remote, unreachable_line("Postalytics", reason),
                       RemoteProblem.unreachable, where, transient=True)
    if exc.kind is PostalyticsFailure.refused_credentials:
        return Failure(FailureKind.remote, _line(exc), RemoteProblem.credentials)
    return Failure(FailureKind.remote, _line(exc), RemoteProblem.other, transient=True)


def _auth(exc: AuthError) -> Failure:
    refresh = exc.kind if isinstance(exc, TokenRefreshError) else getattr(
        exc, "refresh_failure", None)
    if refresh in (RefreshFailure.unreachable, RefreshFailure.failed):
        # The token endpoint did not answer: nothing is known about the token itself.
        return Failure(FailureKind.remote, _line(exc), RemoteProblem.unreachable,
                       "HighLevel's token endpoint" if refresh is RefreshFailure.unreachable
                       else None, transient=True)
    return Failure(FailureKind.remote, _line(exc), RemoteProblem.credentials)


def describe_failure(exc: BaseException) -> Failure | None:
    """The expected failure `exc` stands for, or None when it is unexpected (a bug)."""
    if isinstance(exc, ConfigError | UnknownEventLabel):
        return Failure(FailureKind.config, _line(exc))
    if isinstance(exc, StoreError):
        return Failure(FailureKind.store, _line(exc),
                       transient=exc.problem in (StoreProblem.unreachable, StoreProblem.busy))
    if isinstance(exc, PostalyticsError):  # before AuthError: a refused key is both
        return _postalytics(exc)
    if isinstance(exc, AuthError | HighLevelAuthError):
        return _auth(exc)
    if isinstance(exc, HighLevelError):
        return Failure(FailureKind.remote, _line(exc), RemoteProblem.other, transient=True)
    if isinstance(exc, httpx.TransportError):
        return Failure(FailureKind.remote, one_line(transport_problem(exc), LINE_CAP),
                       RemoteProblem.other, transient=True)
    return None


def unexpected_line(exc: BaseException) -> str:
    """One line for a failure nobody planned for: what it was, and how to learn more."""
    return (f"unexpected {type(exc).__name__}: {_line(exc)} (run again with --debug, or "
            "MAILSYNC_DEBUG=1, for the traceback, and report it)")
