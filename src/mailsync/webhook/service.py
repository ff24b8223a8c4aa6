"""The receiver put together from the settings: its key, its campaigns, its trigger.

`mailsync webhook serve` calls `build_receiver` with a trigger: `inline_trigger` (mode
`inline`, the default) applies a location's writes in this process under the location's
lease; in mode `prefect` the CLI passes a `DebouncedEmitter` around an emitter built in
`tasks/` (this package never imports Prefect).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import uvicorn
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, or_, select
from starlette.applications import Starlette

from mailsync.config import ConfigError, Settings
from mailsync.redact import Secret, get_logger
from mailsync.store.leases import lease_holder, worker_identity
from mailsync.store.models import OPEN_STATUSES, WriteIntent
from mailsync.store.reasons import Reason
from mailsync.sync import runner
from mailsync.sync.apply import Stop
from mailsync.sync.context import SyncContext
from mailsync.webhook.app import ROUTE, ReceiverConfig, create_receiver
from mailsync.webhook.trigger import (
    ApplyCoalescer,
    DebouncedEmitter,
    Next,
    Trigger,
    in_daemon_thread,
)

log = get_logger("mailsync.webhook")

MIN_SECRET_LENGTH = 16
"""The key travels in every URL: long enough not to be guessed, and to be redacted."""
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787


def webhook_secret(ctx: SyncContext) -> Secret:
    """The key every webhook URL carries, from `[webhooks] secret_env` or `secret_secret`."""
    ref = ctx.settings.webhooks.secret
    value = Secret(ctx.resolve_secret(ref))
    if len(value.get()) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{ctx.settings.source}: webhooks: the secret in {ref.describe()} "
                          f"must be at least {MIN_SECRET_LENGTH} characters long")
    return value


def webhook_url(settings: Settings, drop_id: str, secret: Secret,
                base_url: str | None = None) -> str:
    """The URL to paste into Postalytics for one campaign (it contains the key)."""
    camp = settings.campaign(drop_id)
    base = (base_url or settings.webhooks.public_url
            or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}").rstrip("/")
    path = ROUTE.replace("{drop_id}", quote(camp.drop_id, safe=""))
    return f"{base}{path}?key={quote(secret.get(), safe='')}"


def inline_apply(ctx: SyncContext, holder: str | None = None
                 ) -> Callable[[str], Awaitable[Next]]:
    """Apply one location's open writes, as the scheduled sync does, under its lease.

    Each apply runs in a thread of its own with its own event loop (like a Prefect task),
    so the receiver's loop keeps answering webhooks while the store is written.
    """
    holder = holder or worker_identity()

    async def apply(location_id: str) -> Next:
        opts = runner.apply_options(ctx, holder=holder)
        result = await in_daemon_thread(
            lambda: asyncio.run(runner.apply(ctx, location_id, opts)))
        if result.stopped == Stop.lease_held_elsewhere:
            return Next.retry
        if result.stopped is not None:
            log.warning("location %s: apply after webhooks stopped: %s", location_id,
                        result.stopped.value)
        return Next.idle

    return apply


def inline_trigger(ctx: SyncContext, holder: str | None = None) -> ApplyCoalescer:
    """Mode `inline`: the receiver applies each location it has new writes for."""
    return ApplyCoalescer(inline_apply(ctx, holder))


def writes_waiting(engine: Engine) -> Callable[[str], bool]:
    """Whether a location has writes planned and not sent (pending or unknown), other than
    those deferred to tomorrow by the daily quota."""

    def waiting(location_id: str) -> bool:
        q = select(func.count()).select_from(WriteIntent).where(
            WriteIntent.location_id == location_id,
            col(WriteIntent.status).in_(list(OPEN_STATUSES)),
            or_(col(WriteIntent.reason_code).is_(None),
                col(WriteIntent.reason_code) != Reason.daily_quota))
        with Session(engine) as s:
            return s.exec(q).one() > 0

    return waiting


def prefect_trigger(ctx: SyncContext, emit: Callable[[str], None]) -> DebouncedEmitter:
    """Mode `prefect`: announce a location through `emit` (a Prefect event, built in
    `tasks/`), keeping one run per location (see `DebouncedEmitter`)."""
    engine = ctx.engine
    return DebouncedEmitter(emit, busy=lambda loc: lease_holder(engine, loc) is not None,
                            waiting=writes_waiting(engine))


def check_credentials(ctx: SyncContext) -> None:
    """Resolve every location's static token now, so a missing one stops the receiver at
    start, not at its first webhook (OAuth tokens are resolved when first needed)."""
    for loc in ctx.settings.locations:
        if loc.token is not None:
            ctx.resolve_secret(loc.token)


def build_receiver(ctx: SyncContext, trigger: Trigger) -> Starlette:
    """The receiver's app for the configured campaigns."""
    campaigns = {c.drop_id: c for c in ctx.settings.campaigns}
    return create_receiver(ReceiverConfig(ctx.engine, campaigns, webhook_secret(ctx), trigger))


def serve(app: Starlette, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve until stopped. No access log: a request line would carry the key."""
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                lifespan="on", server_header=False, proxy_headers=True)
