"""What `mailsync config check` proves: every secret set, and with `--online` the store at
this version's schema and each credential accepted by a cheap read.

Each check is a `Check` row with a typed verdict; the command prints them as one table and
exits with the code of the first kind of failure (config, then store, then remote).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mailsync.cli.options import labelled
from mailsync.clients.http import CallStatus
from mailsync.clients.postalytics import PostalyticsError
from mailsync.config import ConfigError, SecretRef, Settings, env_resolver
from mailsync.store.engine import (
    current_revision,
    existing_identity,
    head_revision,
    known_revision,
    safe_url,
)
from mailsync.sync.context import SyncContext
from mailsync.sync.failures import (
    FailureKind,
    RemoteProblem,
    describe_failure,
    unreachable_line,
)

ONLINE_ATTEMPTS = 2
"""Tries per online check: enough to ride out one dropped connection, not a long retry."""
PROBE_EMAIL = "mailsync-config-check@example.invalid"
"""Looked up (never created) to prove a location's token reads that location's contacts."""


class Verdict(StrEnum):
    """How one check came out."""

    ok = "ok"
    warning = "warning"
    """Works now, but needs attention (or could not be told without --online)."""
    failed = "failed"
    skipped = "skipped"
    """Not tried: something it depends on failed first."""


@dataclass(frozen=True)
class Check:
    """One line of the check's table."""

    what: str
    verdict: Verdict
    detail: str
    kind: FailureKind | None = None
    """For a failure: which kind, so the exit code says what to fix first."""


def _ok(what: str, detail: str) -> Check:
    return Check(what, Verdict.ok, detail)


def _failed(what: str, detail: str, kind: FailureKind) -> Check:
    return Check(what, Verdict.failed, detail, kind)


# -- offline: secrets --------------------------------------------------------------------------

def _secret(what: str, ref: SecretRef, env: dict[str, str], *, optional: str = "") -> Check:
    """Whether a secret can be had: an env var must be set; a Prefect Secret block is read
    only inside Prefect, so it is named, not proven."""
    if ref.env and env.get(ref.env):
        return _ok(what, f"{ref.describe()} is set")
    if ref.secret:
        return Check(what, Verdict.warning, f"{ref.describe()}: read only when running under "
                     "Prefect, not checked here")
    if optional:
        return Check(what, Verdict.warning, f"{ref.describe()} is not set: {optional}")
    return _failed(what, f"{ref.describe()} is not set: export it (or name a Prefect Secret "
                   "block)", FailureKind.config)


def secret_checks(settings: Settings, env: dict[str, str]) -> Iterator[Check]:
    """Every secret the configuration names: the Postalytics key, each location's token or
    OAuth client and refresh token."""
    yield _secret("Postalytics API key", settings.postalytics.api_key, env)
    for loc in settings.locations:
        name = f"location {labelled(loc.name, loc.id)}"
        if loc.oauth is None:
            assert loc.token is not None
            yield _secret(f"{name}: token", loc.token, env)
            continue
        yield _secret(f"{name}: OAuth client id", loc.oauth.ref("client_id"), env)
        yield _secret(f"{name}: OAuth client secret", loc.oauth.ref("client_secret"), env)
        yield _secret(f"{name}: OAuth refresh token", loc.oauth.ref("refresh_token"), env,
                      optional="fine once the store holds a rotated one (--online tries it)")


# -- the store ---------------------------------------------------------------------------------

def store_check(settings: Settings, *, online: bool) -> Check:
    """The store: whether it exists and, online, whether its schema is this version's."""
    url = settings.database.url
    try:
        found = existing_identity(url)
        if found is None:
            return Check("store", Verdict.warning if online else Verdict.ok,
                         f"{safe_url(url)}: not created yet (the first sync or `mailsync db "
                         "upgrade` creates it)")
        if not online:
            return _ok("store", found.describe())
        current, head = current_revision(url), head_revision()
    except Exception as exc:  # each failure is its row, or re-raised
        return _failure_row("store", exc)
    if current == head:
        return _ok("store", f"{found.describe()}: schema at {head}, this version's")
    if current is not None and not known_revision(current):
        return _failed("store", f"{found.describe()}: schema revision {current} is newer than "
                       "this mailsync: run the version that upgraded it", FailureKind.store)
    return Check("store", Verdict.warning, f"{found.describe()}: schema at {current}, this "
                 f"version's is {head}: the next run upgrades it (or `mailsync db upgrade`)")


def _failure_row(what: str, exc: BaseException) -> Check:
    failure = describe_failure(exc)
    if failure is None:
        raise exc
    return _failed(what, failure.line, failure.kind)


# -- online: one cheap read per credential -------------------------------------------------------

def _country_of(details: dict[str, Any]) -> str | None:
    for key, value in details.items():
        if str(key).casefold() == "country" and isinstance(value, str) and value.strip():
            return value.strip().upper()
    return None


def _campaign_row(settings: Settings, drop_id: str, details: dict[str, Any]) -> Check:
    camp = settings.campaign(drop_id)
    what = f"campaign {labelled(camp.name, drop_id)}"
    name = details.get("DirectMailName") or details.get("name") or ""
    country = _country_of(details)
    if country is not None and country != camp.country:
        return _failed(what, f"Postalytics has it as {country} mail, the config says "
                       f"{camp.country}: set country = \"{country}\"", FailureKind.config)
    said = (f"{country} mail" if country else
            f"country not given by Postalytics ({camp.country} configured)")
    return _ok(what, "found at Postalytics" + (f" as {name!r}" if name else "") + f", {said}")


async def _postalytics_checks(ctx: SyncContext) -> list[Check]:
    """One details read per campaign with the Postalytics key; an unreachable API or a
    refused key is told once, and the other campaigns are skipped."""
    out: list[Check] = []
    stop: str | None = None
    async with ctx.postalytics() as pa:
        pa.max_attempts = ONLINE_ATTEMPTS
        for camp in ctx.settings.campaigns:
            what = f"campaign {labelled(camp.name, camp.drop_id)}"
            if stop:
                out.append(Check(what, Verdict.skipped, stop))
                continue
            try:
                details = await pa.campaign_details(camp.drop_id)
            except PostalyticsError as exc:
                failure = describe_failure(exc)
                assert failure is not None
                if exc.http_status == 404:
                    out.append(_failed(what, "Postalytics has no campaign with this drop_id: "
                                       "correct drop_id", FailureKind.config))
                    continue
                out.append(_failed(what, failure.line, failure.kind))
                if failure.remote in (RemoteProblem.unreachable, RemoteProblem.credentials):
                    stop = "not tried: see the first campaign's failure"
                continue
            out.append(_campaign_row(ctx.settings, camp.drop_id, details))
    return out


async def _location_check(ctx: SyncContext, location_id: str) -> Check:
    loc = ctx.settings.location(location_id)
    what = f"location {labelled(loc.name, loc.id)}"
    async with ctx.highlevel(location_id) as hl:
        hl.max_attempts = ONLINE_ATTEMPTS
        found = await hl.find_contact(email=PROBE_EMAIL)
    if found.status == CallStatus.ok:
        return _ok(what, "HighLevel accepted its token (one contact lookup)")
    kind = FailureKind.remote
    if found.http_status in (401, 403):
        return _failed(what, f"HighLevel refused its token: {found.reason}", kind)
    if found.unreachable:
        return _failed(what, unreachable_line("HighLevel", found.reason), kind)
    return _failed(what, found.reason or f"HTTP {found.http_status}", kind)


async def _highlevel_checks(ctx: SyncContext, store_ready: bool) -> list[Check]:
    out: list[Check] = []
    for loc in ctx.settings.locations:
        what = f"location {labelled(loc.name, loc.id)}"
        if loc.oauth is not None and not store_ready:
            # OAuth keeps its rotated tokens in the store: a check must not create it.
            out.append(Check(what, Verdict.skipped, "OAuth needs the store, which is not "
                             "ready (see the store's row)"))
            continue
        try:
            out.append(await _location_check(ctx, loc.id))
        except ConfigError:  # a secret is not set: its own row already says so
            out.append(Check(what, Verdict.skipped, "not tried: a secret it needs is not set"))
        except Exception as exc:  # each failure is its row, or re-raised
            out.append(_failure_row(what, exc))
    return out


def online_checks(settings: Settings, store: Check) -> list[Check]:
    """The reads that prove the credentials: Postalytics per campaign, HighLevel per
    location (secrets that are missing were failed already and are skipped here)."""
    ctx = SyncContext(settings, resolve_secret=env_resolver())

    async def both() -> list[Check]:
        try:
            pa = await _postalytics_checks(ctx)
        except ConfigError as exc:  # the key is not set: its own row already says so
            pa = [Check("Postalytics", Verdict.skipped, str(exc))]
        return pa + await _highlevel_checks(ctx, store.verdict is Verdict.ok)

    return asyncio.run(both())
