"""Engines and sessions for SQLite (default) and PostgreSQL, and schema upgrades via Alembic."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine


def normalise_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` as psycopg 3 URLs."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    return make_url(normalise_url(url)).render_as_string(hide_password=True)


_MIGRATION_LOCK = 0x6D61696C  # "mail": the advisory lock id schema upgrades take
_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _engine(url: str) -> Engine:
    with _engines_lock:
        if url not in _engines:
            _engines[url] = _create(url)
        return _engines[url]


def _create(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets readers (reports) run beside the writer; NORMAL sync is safe under WAL.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def get_engine(url: str, *, upgrade: bool = True) -> Engine:
    """A shared engine for this URL; brings the schema up to date on first use when asked."""
    url = normalise_url(url)
    engine = _engine(url)
    if upgrade:
        _ensure_upgraded(url)
    return engine


_upgraded: set[str] = set()


def _ensure_upgraded(url: str) -> None:
    if url in _upgraded:
        return
    if current_revision(url) != head_revision():
        upgrade_database(url)
    _upgraded.add(url)


def _alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(files("mailsync.store") / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    """The newest migration shipped with this version of mailsync."""
    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    """The database's migration revision, None when it has no mailsync tables yet."""
    with _engine(normalise_url(url)).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_database(url: str) -> tuple[str | None, str | None]:
    """Run every pending migration; returns (revision before, revision after)."""
    url = normalise_url(url)
    before = current_revision(url)
    cfg = _alembic_config(url)
    try:
        with _engine(url).begin() as conn:
            if conn.dialect.name == "postgresql":
                # Several workers may start on a fresh database at once: one migrates, the
                # others wait here and then find the schema current.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError:
        # SQLite has no advisory lock: a concurrent first use may have migrated meanwhile.
        if current_revision(url) != head_revision():
            raise
    _upgraded.add(url)
    return before, current_revision(url)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session committed on success and rolled back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def dispose_engine(url: str) -> None:
    """Close the pooled connections of a URL's engine (tests drop their schema afterwards)."""
    url = normalise_url(url)
    _upgraded.discard(url)
    with _engines_lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()
