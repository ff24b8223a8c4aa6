"""Configuration: a TOML file plus `MAILSYNC_*` environment overrides.

Secrets are never written in the file: it names the environment variable (`*_env`) or the
Prefect Secret block (`*_secret`) that holds each one, and they are resolved at run time.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mailsync.codes import EventCode, UnknownEventLabel, WriteClass, codes_for_country, parse_code

DEFAULT_DATABASE_URL = "sqlite:///mailsync.db"
DEFAULT_POSTALYTICS_URL = "https://api.postalytics.com/api/v1"
DEFAULT_HIGHLEVEL_URL = "https://services.leadconnectorhq.com"
CONTACT_ID_FIELDS = tuple(f"var_field_{i}" for i in range(1, 11))


class ConfigError(Exception):
    """A configuration problem, as one line naming the file, the key and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Strict):
    """Where a secret lives: an environment variable or a Prefect Secret block, never inline."""

    env: str | None = None
    secret: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if not (self.env or self.secret):
            raise ValueError("name an env var (…_env) or a Prefect Secret block (…_secret)")
        return self

    def describe(self) -> str:
        """Where the value comes from, for messages (never the value)."""
        return f"env {self.env}" if self.env else f"Prefect Secret block {self.secret!r}"


class DatabaseConfig(_Strict):
    url: str = DEFAULT_DATABASE_URL


class PostalyticsConfig(_Strict):
    base_url: str = DEFAULT_POSTALYTICS_URL
    account: str = "default"
    api_key_env: str | None = "POSTALYTICS_API_KEY"
    api_key_secret: str | None = None
    requests_per_second: float = Field(default=3.0, gt=0)
    """Postalytics allows 3 requests/s per API key; lower it if other tools share the key."""

    @property
    def api_key(self) -> SecretRef:
        """The reference to the API key (a Secret block wins over an env var)."""
        if self.api_key_secret:
            return SecretRef(secret=self.api_key_secret)
        return SecretRef(env=self.api_key_env)


class HighLevelConfig(_Strict):
    base_url: str = DEFAULT_HIGHLEVEL_URL
    daily_reserve: int = Field(default=1000, ge=0)
    """Writes stop (and stay pending) when fewer than this many daily requests remain."""
    write_order: tuple[WriteClass, ...] = tuple(WriteClass)
    """What goes first when the day's budget runs short: each apply writes in this order."""

    @field_validator("write_order")
    @classmethod
    def _every_class_once(cls, v: tuple[WriteClass, ...]) -> tuple[WriteClass, ...]:
        if sorted(v) != sorted(WriteClass):
            raise ValueError("must name each of " + ", ".join(c.value for c in WriteClass)
                             + " once")
        return v


class OAuthConfig(_Strict):
    client_id_env: str | None = None
    client_id_secret: str | None = None
    client_secret_env: str | None = None
    client_secret_secret: str | None = None
    refresh_token_env: str | None = None
    refresh_token_secret: str | None = None

    def ref(self, name: Literal["client_id", "client_secret", "refresh_token"]) -> SecretRef:
        """The reference for one OAuth value."""
        return SecretRef(env=getattr(self, f"{name}_env"), secret=getattr(self, f"{name}_secret"))

    @model_validator(mode="after")
    def _all_named(self) -> OAuthConfig:
        for name in ("client_id", "client_secret", "refresh_token"):
            if not (getattr(self, f"{name}_env") or getattr(self, f"{name}_secret")):
                raise ValueError(f"oauth needs {name}_env or {name}_secret")
        return self


class LocationConfig(_Strict):
    id: Annotated[str, Field(min_length=1)]
    name: str | None = None
    token_env: str | None = None
    token_secret: str | None = None
    oauth: OAuthConfig | None = None

    @model_validator(mode="after")
    def _one_auth(self) -> LocationConfig:
        static = self.token_env or self.token_secret
        if static and self.oauth:
            raise ValueError("give either token_env/token_secret or [oauth], not both")
        if not static and not self.oauth:
            raise ValueError("needs token_env, token_secret or an [oauth] table")
        return self

    @property
    def token(self) -> SecretRef | None:
        """The static token reference (Private Integration Token), if this location uses one."""
        if self.oauth:
            return None
        return SecretRef(env=self.token_env, secret=self.token_secret)


class CampaignConfig(_Strict):
    drop_id: Annotated[str, Field(min_length=1)]
    location: Annotated[str, Field(min_length=1)]
    country: Literal["US", "CA"] = "US"
    name: str | None = None
    events: tuple[EventCode, ...] | None = None
    """Codes that become tags and notes; None means all codes of the country."""
    retrigger: tuple[EventCode, ...] = ()
    """Codes whose tag is removed and re-added on each new event, so workflows fire per visit."""
    contact_id_field: str | None = None
    create_missing_contacts: bool = False
    lookback_hours: float = Field(default=72.0, gt=0)
    max_pages: int = Field(default=200, ge=1)

    @field_validator("drop_id", mode="before")
    @classmethod
    def _drop_id_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("country", mode="before")
    @classmethod
    def _upper_country(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("events", "retrigger", mode="before")
    @classmethod
    def _parse_codes(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, list | tuple):
            raise ValueError("must be a list of event codes")
        out = []
        for item in v:
            try:
                out.append(parse_code(item))
            except UnknownEventLabel as exc:
                raise ValueError(exc.choices()) from None
        return tuple(out)

    @field_validator("contact_id_field")
    @classmethod
    def _known_field(cls, v: str | None) -> str | None:
        if v is not None and v not in CONTACT_ID_FIELDS:
            raise ValueError(f"must be one of var_field_1 .. var_field_10, not {v!r}")
        return v

    @model_validator(mode="after")
    def _codes_fit_country(self) -> CampaignConfig:
        allowed = codes_for_country(self.country)
        for name in ("events", "retrigger"):
            for code in getattr(self, name) or ():
                if code not in allowed:
                    raise ValueError(f"{name}: {code.value} does not exist for {self.country} mail")
        return self

    @property
    def selected_codes(self) -> frozenset[EventCode]:
        """The codes this campaign writes to HighLevel."""
        if self.events is None:
            return codes_for_country(self.country)
        return frozenset(self.events)


class WebhookMode(StrEnum):
    """What the webhook receiver does once an event is committed."""

    inline = "inline"
    """Apply the location's writes itself, under the location's lease."""
    prefect = "prefect"
    """Emit a Prefect event; a deployment trigger runs the apply flow for the location."""


class WebhooksConfig(_Strict):
    """`[webhooks]`: the receiver of Postalytics' webhooks (`mailsync webhook serve`)."""

    secret_env: str | None = None
    secret_secret: str | None = None
    mode: WebhookMode = WebhookMode.inline
    public_url: str | None = None
    """The receiver's address as Postalytics reaches it (the TLS proxy), for `webhook url`."""

    @property
    def secret(self) -> SecretRef:
        """The reference to the key every webhook URL carries (a ConfigError if none)."""
        if not (self.secret_env or self.secret_secret):
            raise ConfigError("[webhooks] needs secret_env or secret_secret: the key every "
                              "webhook URL carries")
        return SecretRef(env=self.secret_env, secret=self.secret_secret)


class Settings(_Strict):
    """The whole configuration, validated."""

    database: DatabaseConfig = DatabaseConfig()
    postalytics: PostalyticsConfig = PostalyticsConfig()
    highlevel: HighLevelConfig = HighLevelConfig()
    locations: tuple[LocationConfig, ...] = ()
    campaigns: tuple[CampaignConfig, ...] = ()
    webhooks: WebhooksConfig = WebhooksConfig()
    timezone: str = "UTC"
    """The IANA zone reports show times in (e.g. America/Toronto); the store keeps UTC."""
    source: str = "<defaults>"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{v!r} is not an IANA time zone name "
                             "(e.g. UTC, America/Toronto, Europe/Paris)") from None
        return v

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """`timezone` as a tzinfo, for showing times to people."""
        return zoneinfo.ZoneInfo(self.timezone)

    @model_validator(mode="after")
    def _references(self) -> Settings:
        ids = [loc.id for loc in self.locations]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"locations: duplicate id {sorted(dupes)[0]!r}")
        drops = [c.drop_id for c in self.campaigns]
        dupes = {d for d in drops if drops.count(d) > 1}
        if dupes:
            raise ValueError(f"campaigns: duplicate drop_id {sorted(dupes)[0]!r}")
        for i, camp in enumerate(self.campaigns):
            if camp.location not in ids:
                raise ValueError(
                    f"campaigns.{i}.location: {camp.location!r} is not a configured location"
                )
        return self

    def location(self, location_id: str) -> LocationConfig:
        """The location with this id."""
        for loc in self.locations:
            if loc.id == location_id:
                return loc
        raise KeyError(location_id)

    def campaign(self, drop_id: str) -> CampaignConfig:
        """The campaign with this drop id."""
        for camp in self.campaigns:
            if camp.drop_id == drop_id:
                return camp
        raise ConfigError(f"{self.source}: no campaign with drop_id {drop_id!r}")


ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "MAILSYNC_DATABASE_URL": ("database", "url"),
    "MAILSYNC_POSTALYTICS_URL": ("postalytics", "base_url"),
    "MAILSYNC_HIGHLEVEL_URL": ("highlevel", "base_url"),
}


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the table at `loc` (the path of an unknown key) accepts."""
    model: Any = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return [k for k in model.model_fields if k != "source"]


def _model_of(annotation: Any) -> Any:
    """The pydantic model inside an annotation (`LocationConfig`, `tuple[X, ...]`, `X | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """`unknown key (did you mean token_env?)`: the closest key the table accepts."""
    allowed = _allowed_keys(loc)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6) if loc else []
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"


def _format_error(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = _unknown_key(tuple(err["loc"]))
    key = f" {loc}:" if loc else ""
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}:{key} {msg}{more}"


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the config file (MAILSYNC_CONFIG, else ./mailsync.toml if present) and the env.

    Raises ConfigError with one line naming the file, the key and the problem.
    """
    env = os.environ if environ is None else environ
    chosen = path or env.get("MAILSYNC_CONFIG")
    if chosen is None and Path("mailsync.toml").exists():
        chosen = "mailsync.toml"
    data: dict[str, Any] = {}
    source = "<environment>"
    if chosen is not None:
        source = str(chosen)
        try:
            data = tomllib.loads(Path(chosen).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: is a directory, not a config file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    base = Path(chosen).resolve().parent if chosen is not None else Path.cwd()
    _anchor_database(data, base, source)
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            sect = data.setdefault(section, {})
            if not isinstance(sect, dict):
                raise ConfigError(f"{source}: {section}: must be a table")
            # A URL from the environment is the caller's own: relative to where it runs.
            sect[key] = anchor_sqlite_url(env[var], Path.cwd()) if key == "url" else env[var]
    data["source"] = source
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def anchor_sqlite_url(url: str, base: Path) -> str:
    """A SQLite URL whose relative path is made absolute against `base`; others unchanged."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/"):
        return url
    path, sep, query = url[len(prefix):].partition("?")
    # SQLite's URI form (`file:x.db?mode=ro&uri=true`) anchors the path after `file:`.
    uri = "file:" if path.startswith("file:") and "uri=true" in query else ""
    path = path[len(uri):]
    if not path or path == ":memory:" or path.startswith("/"):
        return url
    return f"{prefix}{uri}{(base / path).resolve()}{sep}{query}"


def _anchor_database(data: dict[str, Any], base: Path, source: str) -> None:
    """The file's relative SQLite path names a file beside the config, wherever mailsync runs
    (a Prefect worker's pull step changes the working directory)."""
    section = data.setdefault("database", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: database: must be a table")
    url = section.get("url", DEFAULT_DATABASE_URL)
    if isinstance(url, str):
        section["url"] = anchor_sqlite_url(url, base)


SecretResolver = Callable[[SecretRef], str]


def env_resolver(environ: Mapping[str, str] | None = None) -> SecretResolver:
    """Resolve secret references from environment variables only."""
    env = os.environ if environ is None else environ

    def resolve(ref: SecretRef) -> str:
        if ref.env and env.get(ref.env):
            return env[ref.env]
        if ref.secret:
            raise ConfigError(
                f"{ref.describe()}: Prefect Secret blocks are read only inside Prefect flows"
            )
        raise ConfigError(f"{ref.describe()} is not set")

    return resolve
