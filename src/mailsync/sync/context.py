"""Everything a run needs, built once from the settings: store, secrets and API clients."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from sqlalchemy.engine import Engine

from mailsync.clients.auth import OAuthTokenAuth, StaticTokenAuth
from mailsync.clients.highlevel import HighLevelClient
from mailsync.clients.http import DEFAULT_CONNECTIONS
from mailsync.clients.postalytics import PostalyticsClient
from mailsync.clients.ratelimit import postalytics_limiter
from mailsync.config import ConfigError, SecretRef, SecretResolver, Settings, env_resolver
from mailsync.redact import Secret, install_log_redaction
from mailsync.store.engine import get_engine
from mailsync.store.tokens import DatabaseTokenStore


@dataclass
class SyncContext:
    """The settings plus how to reach the store and both APIs (transports are the test seam)."""

    settings: Settings
    resolve_secret: SecretResolver = field(default_factory=env_resolver)
    postalytics_transport: httpx.AsyncBaseTransport | None = None
    highlevel_transport: httpx.AsyncBaseTransport | None = None
    timeout: float | httpx.Timeout | None = None
    _engine: Engine | None = None

    def __post_init__(self) -> None:
        # Whoever runs a sync (CLI, flow, test) gets secrets scrubbed from every log record.
        install_log_redaction()

    @property
    def engine(self) -> Engine:
        """The store's engine (schema upgraded on first use)."""
        if self._engine is None:
            self._engine = get_engine(self.settings.database.url)
        return self._engine

    def _optional(self, ref: SecretRef) -> Secret | None:
        # Once a rotated refresh token is stored, the configured seed may be gone: fine.
        try:
            return Secret(self.resolve_secret(ref))
        except ConfigError:
            return None

    def postalytics(self) -> PostalyticsClient:
        """A Postalytics client for the configured account."""
        pa = self.settings.postalytics
        key = Secret(self.resolve_secret(pa.api_key))
        extra: dict[str, object] = {}
        if self.timeout is not None:
            extra["timeout"] = self.timeout
        # Shared by every client of this key in the process: campaigns fetch side by side.
        extra["limiter"] = postalytics_limiter(key.get(), pa.requests_per_second)
        return PostalyticsClient(pa.base_url, key, account_name=pa.account,
                                 transport=self.postalytics_transport, **extra)  # type: ignore[arg-type]

    def highlevel(self, location_id: str,
                  connections: int = DEFAULT_CONNECTIONS) -> HighLevelClient:
        """A HighLevel client for one location, with its token or OAuth refresh; its pool
        holds `connections` (as many as its callers send at once)."""
        loc = self.settings.location(location_id)
        auth: StaticTokenAuth | OAuthTokenAuth
        if loc.oauth is not None:
            client_secret = Secret(self.resolve_secret(loc.oauth.ref("client_secret")))
            seed = loc.oauth.ref("refresh_token")
            auth = OAuthTokenAuth(
                location_id,
                client_id=Secret(self.resolve_secret(loc.oauth.ref("client_id"))),
                client_secret=client_secret,
                store=DatabaseTokenStore(self.engine, client_secret),
                refresh_token=self._optional(seed),
                location_name=loc.name,
                refresh_token_source=seed.describe(),
            )
        else:
            assert loc.token is not None
            auth = StaticTokenAuth(Secret(self.resolve_secret(loc.token)))
        extra: dict[str, object] = {}
        if self.timeout is not None:
            extra["timeout"] = self.timeout
        return HighLevelClient(self.settings.highlevel.base_url, location_id, auth,
                               transport=self.highlevel_transport,
                               daily_reserve=self.settings.highlevel.daily_reserve,
                               location_name=loc.name, connections=connections,
                               **extra)  # type: ignore[arg-type]
