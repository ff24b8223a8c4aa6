"""A store that cannot be used, in one line: which store, what is wrong, what to do.

SQLAlchemy raises the driver's error wrapped with the statement and its parameters, hundreds
of lines once a traceback is added. Every engine mailsync creates translates the failures a
person can act on (no server, a refused login, a read-only file, a full disk, an unknown
schema) into a `StoreError` as they happen (`install`), so a command, a Prefect task and a
log line all say the same short sentence. Anything else is left as SQLAlchemy raised it.

The driver's error codes decide, where it has them: SQLite's result codes (Python 3.11
`sqlite_errorcode`) and PostgreSQL's SQLSTATE. Connection failures carry neither, so the
libpq words are matched for those alone.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.interfaces import ExceptionContext
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

DETAIL_CAP = 160
"""Characters of the driver's own words kept in a message."""


class StoreProblem(StrEnum):
    """Why the store cannot be used: decides the advice and the exit code's meaning."""

    unreachable = "unreachable"
    """No database server answered at the URL's host and port."""
    refused = "refused"
    """The server refused the login or the user lacks a privilege."""
    missing = "missing"
    """The server has no database of that name."""
    cannot_open = "cannot_open"
    """The SQLite file cannot be opened or created (its folder is missing or not writable)."""
    read_only = "read_only"
    disk_full = "disk_full"
    io_error = "io_error"
    """The disk failed a read or a write."""
    busy = "busy"
    """Another process held the store's write lock for longer than the wait allows."""
    damaged = "damaged"
    """The file is not a database, or is corrupt."""
    not_migrated = "not_migrated"
    """The store lacks mailsync's tables (or some of them)."""
    schema_unknown = "schema_unknown"
    """The store's schema revision is one this version of mailsync does not ship."""


@dataclass(frozen=True)
class _Advice:
    what: str
    todo: str


_ADVICE: dict[StoreProblem, _Advice] = {
    StoreProblem.unreachable: _Advice(
        "cannot connect", "check that the database server is running and that [database] url "
        "(or MAILSYNC_DATABASE_URL) names its host and port"),
    StoreProblem.refused: _Advice(
        "the database refused this user", "check the user and password in [database] url, "
        "and that the user may read and write the database"),
    StoreProblem.missing: _Advice(
        "the database does not exist", "create it (e.g. `createdb`) or correct the database "
        "name in [database] url"),
    StoreProblem.cannot_open: _Advice(
        "cannot open the SQLite file", "check that its folder exists and that this user may "
        "create and write files in it, or point [database] url elsewhere"),
    StoreProblem.read_only: _Advice(
        "the store is read-only", "give this user write access to the database (for SQLite: "
        "the file and its folder), or point [database] url at a writable store"),
    StoreProblem.disk_full: _Advice(
        "the disk holding the store is full", "free space (or raise the database's quota), "
        "then run again: nothing committed is lost and the next run resumes"),
    StoreProblem.io_error: _Advice(
        "the disk failed a read or a write", "check the disk holding the store (space, "
        "health, a network mount that went away), then run again"),
    StoreProblem.busy: _Advice(
        "the store stayed locked by another process", "wait for the other mailsync run to "
        "finish and try again; use PostgreSQL when several workers share one store"),
    StoreProblem.damaged: _Advice(
        "the file is not a usable database", "restore it from a backup, or point [database] "
        "url at another file"),
    StoreProblem.not_migrated: _Advice(
        "the store lacks mailsync's tables", "run `mailsync db upgrade` with a user allowed "
        "to create tables"),
    StoreProblem.schema_unknown: _Advice(
        "the store's schema is newer than this mailsync", "run the mailsync version that "
        "upgraded it (or newer); never point an older version at a newer store"),
}


class StoreError(SQLAlchemyError):
    """The store cannot be used: one line naming it (password hidden), the problem, the
    driver's own words and what to do. A `SQLAlchemyError`, so code that already handles
    database errors keeps handling it."""

    def __init__(self, problem: StoreProblem, url: str, detail: str = "") -> None:
        self.problem = problem
        self.url = url
        self.detail = detail
        super().__init__(self.line())

    def line(self) -> str:
        """`store <url>: <what> (<driver's words>): <what to do>`."""
        advice = _ADVICE[self.problem]
        words = f" ({self.detail})" if self.detail else ""
        return f"store {self.url}: {advice.what}{words}: {advice.todo}"

    def __str__(self) -> str:
        return self.line()

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect may copy a task's exception across threads: rebuild it from its fields.
        return (StoreError, (self.problem, self.url, self.detail))


def masked_url(url: str) -> str:
    """The URL with any password hidden (the store's own rule, without importing engine)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL is still named, without its password
        return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)


# -- SQLite: primary result codes ------------------------------------------------------------

_SQLITE = {
    3: StoreProblem.read_only,       # SQLITE_PERM
    5: StoreProblem.busy,            # SQLITE_BUSY
    6: StoreProblem.busy,            # SQLITE_LOCKED
    8: StoreProblem.read_only,       # SQLITE_READONLY (and its extended codes)
    10: StoreProblem.io_error,       # SQLITE_IOERR
    11: StoreProblem.damaged,        # SQLITE_CORRUPT
    13: StoreProblem.disk_full,      # SQLITE_FULL
    14: StoreProblem.cannot_open,    # SQLITE_CANTOPEN
    23: StoreProblem.refused,        # SQLITE_AUTH
    26: StoreProblem.damaged,        # SQLITE_NOTADB
}
_SQLITE_EXTENDED = {
    4874: StoreProblem.disk_full,    # SQLITE_IOERR_SHMSIZE: the WAL index could not grow
}
_NO_TABLE = re.compile(r"^no such table\b", re.I)


def _sqlite_problem(error: sqlite3.Error) -> StoreProblem | None:
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int) and code in _SQLITE_EXTENDED:
        return _SQLITE_EXTENDED[code]
    if isinstance(code, int) and code & 0xFF in _SQLITE:
        return _SQLITE[code & 0xFF]
    if _NO_TABLE.match(str(error)):
        return StoreProblem.not_migrated
    # Older SQLite builds leave the code unset: their fixed English words are the fallback.
    text = str(error).lower()
    for words, problem in (("readonly database", StoreProblem.read_only),
                           ("database or disk is full", StoreProblem.disk_full),
                           ("unable to open database file", StoreProblem.cannot_open),
                           ("database is locked", StoreProblem.busy),
                           ("file is not a database", StoreProblem.damaged)):
        if words in text:
            return problem
    return None


# -- PostgreSQL: SQLSTATE, and libpq's words for connection failures ---------------------------

_SQLSTATE = {
    "53100": StoreProblem.disk_full,        # disk_full
    "25006": StoreProblem.read_only,        # read_only_sql_transaction
    "42501": StoreProblem.refused,          # insufficient_privilege
    "28000": StoreProblem.refused,          # invalid_authorization_specification
    "28P01": StoreProblem.refused,          # invalid_password
    "3D000": StoreProblem.missing,          # invalid_catalog_name
    "42P01": StoreProblem.not_migrated,     # undefined_table
    "57P01": StoreProblem.unreachable,      # admin_shutdown
    "57P03": StoreProblem.unreachable,      # cannot_connect_now
}
_SQLSTATE_CLASS = {"08": StoreProblem.unreachable, "28": StoreProblem.refused,
                   "53": StoreProblem.disk_full}
_PG_WORDS: tuple[tuple[re.Pattern[str], StoreProblem], ...] = (
    (re.compile(r"database \S+ does not exist", re.I), StoreProblem.missing),
    (re.compile(r"password authentication failed|role \S+ does not exist|no pg_hba\.conf"
                r"|permission denied", re.I), StoreProblem.refused),
    (re.compile(r"no space left on device|could not extend file", re.I),
     StoreProblem.disk_full),
    (re.compile(r"read-only transaction", re.I), StoreProblem.read_only),
    (re.compile(r"connection refused|could not connect|connection failed|failed to resolve"
                r"|could not translate host|timeout expired|server closed the connection"
                r"|connection .* failed|no route to host|network is unreachable"
                r"|the database system is (starting up|shutting down)", re.I),
     StoreProblem.unreachable),
)


def _pg_problem(error: BaseException) -> StoreProblem | None:
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str) and state:
        return _SQLSTATE.get(state) or _SQLSTATE_CLASS.get(state[:2])
    if type(error).__module__.split(".")[0] not in ("psycopg", "psycopg2"):
        return None
    text = str(error)
    for pattern, problem in _PG_WORDS:
        if pattern.search(text):
            return problem
    return None


def _detail(error: BaseException) -> str:
    """The driver's first meaningful words: no statement, no parameters, no hints."""
    text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(error).__name__
    # libpq: 'connection failed: connection to server at "h", port 1 failed: FATAL:  why'
    first = re.sub(r"^connection failed:\s*", "", first)
    first = re.sub(r'^connection to server at "[^"]*"(?:\s*\([^)]*\))?, port \d+ failed:\s*',
                   "", first)
    first = re.sub(r"^(FATAL|ERROR):\s+", "", first)
    first = " ".join(first.split())
    return first if len(first) <= DETAIL_CAP else first[:DETAIL_CAP - 1].rstrip() + "…"


def classify(error: BaseException) -> StoreProblem | None:
    """What a driver error (or SQLAlchemy's wrapper of one) means for the store, if it is
    one a person can act on; None for anything else (a constraint, a bug)."""
    if isinstance(error, StoreError):
        return error.problem
    orig = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    if isinstance(orig, sqlite3.Error):
        return _sqlite_problem(orig)
    return _pg_problem(orig)


def translate(error: BaseException, url: str) -> StoreError | None:
    """`error` as a `StoreError` naming the store at `url`, or None when it is not a store
    failure a person can act on."""
    if isinstance(error, StoreError):
        return error
    problem = classify(error)
    if problem is None:
        return None
    orig = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    return StoreError(problem, masked_url(url), _detail(orig))


def install(engine: Engine) -> None:
    """Translate the engine's actionable failures into `StoreError`s as they are raised."""

    @event.listens_for(engine, "handle_error")
    def _translate(context: ExceptionContext) -> StoreError | None:
        # A failed pre-ping is SQLAlchemy's own cue to reconnect: never replace it.
        if context.is_pre_ping:
            return None
        return translate(context.original_exception, str(engine.url))
