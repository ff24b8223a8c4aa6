"""The few writes everything shares: insert-if-new, which both databases do atomically, and
a batch written in a savepoint that falls back to one savepoint per row when a row is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)
from sqlmodel import Session, SQLModel

T = TypeVar("T")
R = TypeVar("R")

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def dialect_insert(dialect: str) -> Callable[[Table], Any]:
    """The INSERT construct of a dialect that knows ON CONFLICT (both databases we run on)."""
    ins = _INSERTS.get(dialect)
    if ins is None:
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    return ins


def insert_ignore(
    session: Session, objs: Sequence[SQLModel], returning: str | None = None,
) -> list[Any]:
    """Insert model rows, skipping any that collide with a unique key; returns the inserted
    rows' `returning` column (default: the first primary-key column).

    Safe under races: two connections inserting the same key leave one row and no error.
    """
    if not objs:
        return []
    table: Table = type(objs[0]).__table__  # type: ignore[attr-defined]
    rows = [_row_values(o, table) for o in objs]
    ins = dialect_insert(session.get_bind().dialect.name)
    out = table.c[returning] if returning else next(iter(table.primary_key.columns))
    # One single-row statement executed for many parameter sets: SQLAlchemy batches it into
    # multi-row INSERTs itself ("insertmanyvalues"). It is compiled on every call (neither
    # dialect's ON CONFLICT insert has a cache key in SQLAlchemy 2.0), but as one row's
    # statement, where a multi-row `.values(rows)` compiled every row's parameters. RETURNING
    # names the rows actually inserted on both databases (psycopg's rowcount is -1 here).
    stmt = ins(table).on_conflict_do_nothing().returning(out)
    return list(session.execute(stmt, rows).scalars().all())


def _row_values(obj: SQLModel, table: Table) -> dict[str, Any]:
    """A model row's column values, read from its `__dict__`, where pydantic keeps them
    (`model_dump` took 5 µs a row, this 3). An autoincrement id left as None is omitted, not
    sent as NULL (PostgreSQL refuses it)."""
    values = obj.__dict__
    row = {c: values[c] for c in _column_keys(table) if c in values}
    if "id" in row and row["id"] is None:
        del row["id"]
    return row


@functools.cache
def _column_keys(table: Table) -> tuple[str, ...]:
    return tuple(c.key for c in table.columns)


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A savepoint nested in the session's transaction, on both databases.

    pysqlite begins its own transaction only before an INSERT or UPDATE, so a SAVEPOINT sent
    first would start one by itself and releasing it would commit: a dry run's rollback would
    then undo nothing (SQLAlchemy documents this pysqlite flaw). So BEGIN is sent first.
    """
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        driver = conn.connection.driver_connection
        if driver is not None and not driver.in_transaction:
            conn.exec_driver_sql("BEGIN")
    with session.begin_nested():
        yield


def refused_by_row(exc: BaseException) -> bool:
    """Whether a write failed because of the rows it wrote (their data, a constraint), rather
    than the connection, a lock or a timeout, which another try may get past."""
    if isinstance(exc, UnicodeError):  # the driver could not encode a text value
        return True
    if isinstance(exc, DBAPIError):
        return not exc.connection_invalidated and not isinstance(
            exc, OperationalError | InterfaceError)
    return isinstance(exc, StatementError)  # a value a column type could not bind


def error_line(exc: BaseException) -> str:
    """The database's own one-line error, without the statement or its parameters."""
    orig = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else ''}"[:500]


def write_isolating(session: Session, items: Sequence[T], write: Callable[[Sequence[T]], R]
                    ) -> tuple[list[R], list[tuple[T, str]]]:
    """Run `write(items)` in a savepoint; if the database refuses it, run `write([item])` per
    item, each in its own savepoint, so one refused row never blocks the others.

    Returns the results of the writes that held, and each refused item with the database's
    one-line error. Errors that are not the rows' fault are raised.
    """
    if not items:
        return [], []
    try:
        with savepoint(session):
            return [write(items)], []
    except (SQLAlchemyError, UnicodeError) as exc:
        if not refused_by_row(exc):
            raise
        if len(items) == 1:
            return [], [(items[0], error_line(exc))]
    done: list[R] = []
    refused: list[tuple[T, str]] = []
    for item in items:
        try:
            with savepoint(session):
                out = write([item])
        except (SQLAlchemyError, UnicodeError) as exc:
            if not refused_by_row(exc):
                raise
            refused.append((item, error_line(exc)))
        else:
            done.append(out)
    return done, refused
