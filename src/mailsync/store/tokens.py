"""OAuth tokens kept in the store, encrypted: a rotated refresh token must survive restarts,
and a secret never sits in the database in clear text.

The key is derived from the location's OAuth client secret, which mailsync needs anyway to
refresh, so there is no extra key to manage and a leaked database alone reveals nothing.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from mailsync.redact import Secret, as_secret
from mailsync.store.models import OAuthTokenRow, StoreMeta, utcnow


@dataclass(frozen=True)
class StoredToken:
    """One location's OAuth tokens as persisted. `expires_at` is when the access token ends."""

    refresh_token: Secret
    access_token: Secret | None = None
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        # Callers (the database layer) may hand in plain strings.
        object.__setattr__(self, "refresh_token", as_secret(self.refresh_token))
        if self.access_token is not None:
            object.__setattr__(self, "access_token", as_secret(self.access_token))
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            # SQLite hands back naive datetimes; they were written as UTC.
            object.__setattr__(self, "expires_at", self.expires_at.replace(tzinfo=UTC))


def _fernet(key_material: Secret) -> Fernet:
    digest = hashlib.sha256(b"mailsync-token-store\x00" + key_material.get().encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


class DatabaseTokenStore:
    """A TokenStore over the `oauth_tokens` table, encrypting with a key from a secret."""

    def __init__(self, engine: Engine, key_material: Secret) -> None:
        self._engine = engine
        self._fernet = _fernet(key_material)

    def load(self, location_id: str) -> StoredToken | None:
        """The saved tokens, or None when none are saved or they no longer decrypt."""
        with Session(self._engine) as s:
            row = s.get(OAuthTokenRow, location_id)
            if row is None:
                return None
            try:
                refresh = self._fernet.decrypt(row.refresh_token_enc.encode()).decode()
                access = (self._fernet.decrypt(row.access_token_enc.encode()).decode()
                          if row.access_token_enc else None)
            except InvalidToken:
                # The client secret changed: the saved tokens are unreadable; start from config.
                return None
            return StoredToken(refresh_token=Secret(refresh),
                               access_token=Secret(access) if access else None,
                               expires_at=row.expires_at)

    def save(self, location_id: str, token: StoredToken) -> None:
        """Persist (and commit) the tokens, encrypted."""
        enc = self._fernet.encrypt
        with Session(self._engine) as s:
            row = s.get(OAuthTokenRow, location_id) or OAuthTokenRow(
                location_id=location_id, refresh_token_enc="")
            row.refresh_token_enc = enc(token.refresh_token.get().encode()).decode()
            row.access_token_enc = (enc(token.access_token.get().encode()).decode()
                                    if token.access_token else None)
            row.expires_at = token.expires_at
            row.updated_at = utcnow()
            s.add(row)
            s.commit()

    def describe(self, location_id: str) -> str:
        """Which store this is, for messages that must tell stores apart: its id (from
        `store_meta`) and when it last saved this location's tokens. Never a token."""
        try:
            with Session(self._engine) as s:
                meta = s.get(StoreMeta, "store_id")
                row = s.get(OAuthTokenRow, location_id)
                saved = row.updated_at if row is not None else None
        except SQLAlchemyError as exc:
            return f"a database store whose identity could not be read ({type(exc).__name__})"
        name = f"store {meta.value}" if meta is not None else "a store without an id"
        if saved is None:
            return f"{name}, which holds no OAuth tokens for this location"
        if saved.tzinfo is None:  # SQLite hands back naive datetimes; they were written as UTC
            saved = saved.replace(tzinfo=UTC)
        when = saved.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"{name}, which last saved this location's OAuth tokens at {when}"
