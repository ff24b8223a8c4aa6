"""Engines and sessions for SQLite (default) and PostgreSQL, and schema upgrades via Alembic."""

from __future__ import annotations

import errno
import fcntl
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError as AlembicError
from sqlalchemy import event, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

from mailsync.codes import EventCode
from mailsync.store.errors import StoreError, StoreProblem, install, masked_url, translate
from mailsync.store.models import EventSource, WriteKind, WriteStatus
from mailsync.store.reasons import QuarantineReason, Reason


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


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL names (also in its `file:` URI form), None for memory or for
    another database."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") and parsed.query.get("uri") == "true":
        database = database[len("file:"):].partition("?")[0]
        if not database or database == ":memory:":
            return None
    return Path(database)


def _os_failure(exc: OSError, url: str) -> StoreError:
    """A file-system failure around a SQLite file (its folder, its lock file), as a store
    failure: what the OS said, and what to do."""
    problem = {errno.EROFS: StoreProblem.read_only, errno.ENOSPC: StoreProblem.disk_full,
               errno.EDQUOT: StoreProblem.disk_full}.get(exc.errno or 0,
                                                         StoreProblem.cannot_open)
    return StoreError(problem, masked_url(url), exc.strerror or type(exc).__name__)


SQLITE_CACHE_KIB = 8192
"""Each SQLite connection's page cache."""
SQLITE_WAL_PAGES = 4000
"""Pages the SQLite WAL may hold before a commit checkpoints it into the database file."""


def _as_is(value: object) -> object:
    return value


_STORED_ENUMS = (WriteKind, WriteStatus, EventSource, EventCode, Reason, QuarantineReason)
"""The text enums rows hold as they are bound (a ledger row's kind and status, an event's
source)."""


def _bind_directly() -> None:
    """Let sqlite3 bind None and our text enums without its adapter search.

    The driver looks every parameter that is not exactly an int, float or str up in its
    adapter registry, and on a miss asks the protocol and the value for `__adapt__` and
    `__conform__`: a quarter of a microsecond per None or enum member, and a page of events
    binds thousands (bench/RESULTS.md, section 3). Registered, None is found at once and
    still binds as NULL, and a member binds as its value.
    """
    sqlite3.register_adapter(type(None), _as_is)
    for enum in _STORED_ENUMS:
        sqlite3.register_adapter(enum, str)


def _create(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _bind_directly()
        path = sqlite_path(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _os_failure(exc, url) from None
        # LIFO: the connection used last is the one whose page cache is still valid. SQLite
        # empties a connection's cache when another one wrote since its last transaction, and
        # the pool's default order hands out the connection idle longest: every checkout
        # started cold (bench/RESULTS.md, section 3).
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_use_lifo=True)
        install(engine)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets readers (reports) run beside the writer; NORMAL sync is safe under WAL.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            # A chunk of the apply updates rows on a few thousand pages: the default cache
            # (2 MB) re-read them; 8 MB per connection holds them, however large the store.
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            # Each commit writes its pages to the WAL, and a checkpoint copies them into the
            # file: every 1,000 pages (the default), a checkpoint copied the same index pages
            # again every few commits; 4,000 pages (16 MB of WAL) cut commits' CPU by a third.
            cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_PAGES}")
            cur.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    install(engine)
    return engine


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
    current = current_revision(url)
    if current != head_revision():
        _check_known(url, current)
        upgrade_database(url)
    _upgraded.add(url)


def known_revision(revision: str) -> bool:
    """Whether this version of mailsync ships the schema revision `revision`."""
    scripts = ScriptDirectory.from_config(_alembic_config("sqlite://"))
    return revision in {s.revision for s in scripts.walk_revisions()}


def _check_known(url: str, revision: str | None) -> None:
    """Refuse a store whose revision this version does not ship (a newer mailsync migrated
    it): upgrading would fail deep inside Alembic, and writing would corrupt it."""
    if revision is None:
        return
    if not known_revision(revision):
        raise StoreError(StoreProblem.schema_unknown, masked_url(url),
                         f"revision {revision}; this version knows up to {head_revision()}")


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
    """Run every pending migration; returns (revision before, revision after).

    Safe when many processes start on a fresh store at once: one migrates, the others wait
    for it and then find the schema current.
    """
    url = normalise_url(url)
    with _sqlite_migration_lock(url):
        before = current_revision(url)
        if before != head_revision():
            _check_known(url, before)
            _migrate(url)
    _upgraded.add(url)
    return before, current_revision(url)


def _migrate(url: str) -> None:
    cfg = _alembic_config(url)
    with _engine(url).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, "head")
        except AlembicError as exc:
            # A store Alembic cannot bring to head (a missing or edited revision row).
            failure = translate(exc, url)
            raise failure or StoreError(StoreProblem.not_migrated, masked_url(url),
                                        str(exc).splitlines()[0][:160]) from None


@contextmanager
def _sqlite_migration_lock(url: str) -> Iterator[None]:
    """An exclusive lock beside a SQLite file for the length of a migration: SQLite has no
    advisory lock, and two first uses would both try to create the tables."""
    database = sqlite_path(url)
    if database is None:
        yield
        return
    lock = Path(f"{database}-migrate.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = lock.open("a")
    except OSError as exc:
        raise _os_failure(exc, url) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class StoreIdentity:
    """Which store a run uses: its URL (password hidden) and the id created with it."""

    url: str
    store_id: str
    created_at: str

    def describe(self) -> str:
        """`<url> (store <id>, created <date>)`, for the line every command prints."""
        return f"{self.url} (store {self.store_id}, created {self.created_at[:10]})"


def store_identity(url: str) -> StoreIdentity:
    """The identity of the store at `url`, bringing its schema up to date first."""
    get_engine(url)
    found = existing_identity(url)
    assert found is not None  # the upgrade created it
    return found


def existing_identity(url: str) -> StoreIdentity | None:
    """The identity of the store at `url` if it exists and is migrated; never creates it."""
    url = normalise_url(url)
    path = sqlite_path(url)
    if make_url(url).get_backend_name() == "sqlite" and (path is None or not path.is_file()):
        return None
    with _engine(url).connect() as conn:
        if not sa_inspect(conn).has_table("store_meta"):
            return None
        meta = dict(conn.execute(text("SELECT key, value FROM store_meta")).tuples().all())
    return StoreIdentity(safe_url(url), meta.get("store_id", "?"), meta.get("created_at", "?"))


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
