"""The few writes everything shares: insert-if-new, which both databases do atomically, and
a batch written in a savepoint that falls back to one savepoint per row when a row is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.sql import ClauseElement
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
    conn = session.connection()
    dialect_insert(conn.dialect.name)  # refuses a database without ON CONFLICT
    out = returning or next(iter(table.primary_key.columns)).key
    shape = _InsertShape.of(conn.dialect, table, objs[0].__dict__)
    memo: dict[tuple[int, Any], Any] = {}
    rows = [shape.values(o.__dict__, memo) for o in objs]
    inserted: list[Any] = []
    for start in range(0, len(rows), shape.rows_per_statement):
        chunk = rows[start:start + shape.rows_per_statement]
        sql = shape.sql(len(chunk), out)
        params = tuple(v for row in chunk for v in row)
        inserted += [row[0] for row in conn.exec_driver_sql(sql, params)]
    return inserted


_MAX_PARAMS = 30_000
"""Parameters in one INSERT: SQLite allows 32,766, PostgreSQL 65,535."""


@dataclass(frozen=True)
class _InsertShape:
    """One table's multi-row `INSERT ... ON CONFLICT DO NOTHING RETURNING`, written as SQL
    for the driver and cached per row count. SQLAlchemy 2.0 gives neither dialect's ON
    CONFLICT insert a cache key, so through it every call compiled the statement and bound
    each row through its execution context: half of a sync's fetch CPU (bench/RESULTS.md,
    section 3). Values still pass the columns' own bind processors, and a value one refuses
    raises `StatementError` as SQLAlchemy would."""

    dialect: Dialect
    table: Table
    columns: tuple[str, ...]
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    """(position, bind processor) of the columns that have one."""

    @staticmethod
    def of(dialect: Dialect, table: Table, first: dict[str, Any]) -> _InsertShape:
        """The shape for rows like `first`: an autoincrement id left as None is omitted, not
        sent as NULL (PostgreSQL refuses it)."""
        omit_id = "id" in table.c and first.get("id") is None
        return _shape(dialect, table, omit_id)

    @property
    def rows_per_statement(self) -> int:
        return max(1, min(500, _MAX_PARAMS // len(self.columns)))

    def values(self, row: dict[str, Any], memo: dict[tuple[int, Any], Any]) -> list[Any]:
        """A model row's values (from its `__dict__`, where pydantic keeps them), bound; a
        value seen before in the same column is bound once (`memo`: one per batch)."""
        values = list(map(row.get, self.columns))
        try:
            for i, process in self.processors:
                if values[i] is not None:  # most rows leave most times unset
                    values[i] = _bound_once(memo, i, values[i], process)
        except Exception as exc:
            raise StatementError(f"a value of {self.table.name} could not be bound: {exc}",
                                 None, None, exc) from exc
        return values

    def sql(self, rows: int, returning: str) -> str:
        return _insert_sql(self, rows, returning)


@functools.lru_cache(maxsize=64)
def _shape(dialect: Dialect, table: Table, omit_id: bool) -> _InsertShape:
    cols = [c for c in table.columns if not (omit_id and c.key == "id")]
    processors = ((i, _bind_processor(c.type, dialect)) for i, c in enumerate(cols))
    return _InsertShape(dialect, table, tuple(c.key for c in cols),
                        tuple((i, p) for i, p in processors if p is not None))


@functools.lru_cache(maxsize=256)
def _insert_sql(shape: _InsertShape, rows: int, returning: str) -> str:
    quote = shape.dialect.identifier_preparer.quote
    one = "(" + ", ".join([_placeholder(shape.dialect)] * len(shape.columns)) + ")"
    return (f"INSERT INTO {shape.dialect.identifier_preparer.format_table(shape.table)} "
            f"({', '.join(quote(c) for c in shape.columns)}) VALUES "
            f"{', '.join([one] * rows)} ON CONFLICT DO NOTHING RETURNING {quote(returning)}")


def rows_where_in(conn: Connection, table: Table, columns: Sequence[str], key: str,
                  values: Sequence[Any]) -> list[tuple[Any, ...]]:
    """`columns` of the rows of `table` whose `key` is one of `values`, with the columns'
    result types applied; driver SQL cached per number of values.

    A sync reads this way three times a page (which of its events are stored already); built
    and run through SQLAlchemy with an expanding IN list, handling the statement cost more
    than the read (bench/RESULTS.md, section 3).
    """
    shape = _select_shape(conn.dialect, table, tuple(columns), key)
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(values), _SELECT_CHUNK):
        part = tuple(shape.bind_key(v) for v in values[start:start + _SELECT_CHUNK])
        out += [shape.row(r) for r in conn.exec_driver_sql(shape.sql(len(part)), part)]
    return out


_SELECT_CHUNK = 500


@dataclass(frozen=True)
class _SelectShape:
    """`SELECT columns FROM table WHERE key IN (...)` for one dialect, with the key's bind
    processor and the columns' result processors."""

    dialect: Dialect
    table: Table
    columns: tuple[str, ...]
    key: str
    key_processor: Callable[[Any], Any] | None
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]

    def bind_key(self, value: Any) -> Any:
        process = self.key_processor
        return value if process is None or value is None else process(value)

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        """A driver row with each column's result type applied."""
        values = list(raw)
        for i, process in self.processors:
            values[i] = process(values[i])
        return tuple(values)

    def sql(self, count: int) -> str:
        return _select_sql(self, count)


@functools.lru_cache(maxsize=64)
def _select_shape(dialect: Dialect, table: Table, columns: tuple[str, ...], key: str
                  ) -> _SelectShape:
    found = ((i, table.c[c].type.dialect_impl(dialect).result_processor(dialect, None))
             for i, c in enumerate(columns))
    return _SelectShape(dialect, table, columns, key, _bind_processor(table.c[key].type, dialect),
                        tuple((i, p) for i, p in found if p is not None))


@functools.lru_cache(maxsize=256)
def _select_sql(shape: _SelectShape, count: int) -> str:
    quote = shape.dialect.identifier_preparer.quote
    return (f"SELECT {', '.join(quote(c) for c in shape.columns)} FROM "
            f"{shape.dialect.identifier_preparer.format_table(shape.table)} "
            f"WHERE {quote(shape.key)} IN ({', '.join([_placeholder(shape.dialect)] * count)})")


def _placeholder(dialect: Dialect) -> str:
    return "?" if dialect.paramstyle == "qmark" else "%s"  # pysqlite; psycopg


def _bind_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """A column type's bind processor as the dialect runs it: from the dialect's own type,
    whose processors write the database's form (the generic type's pass a SQLite time on to
    sqlite3's adapter, another text form)."""
    return type_.dialect_impl(dialect).bind_processor(dialect)


def execute_many(conn: Connection, stmt: ClauseElement,
                 rows: Sequence[Mapping[str, Any]]) -> None:
    """Run a statement built once (module-level or cached) once per parameter set, as the
    driver's executemany: compiled once per dialect, each distinct value bound once.

    Through `Connection.execute`, every row went through SQLAlchemy's parameter machinery,
    and a row's timestamp through the column type's processor, though a batch stamps one
    time: most of the apply's own CPU outside the database (bench/RESULTS.md, section 3).
    Not for statements with an expanding IN list.
    """
    if rows:
        conn.exec_driver_sql(*_many_shape(conn.dialect, stmt).bound(rows))


@dataclass(frozen=True)
class _ManyShape:
    """A compiled statement's SQL, its parameters in order (each with the value the
    statement carries itself, if any) and the bind processor of those that have one."""

    sql: str
    names: tuple[str, ...]
    positional: bool
    defaults: tuple[tuple[str, Any], ...]
    """(name, the statement's own value or None), in parameter order."""
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    """(position, bind processor) of the parameters that have one."""

    def bound(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[Any]]:
        """The SQL and its parameter sets, bound (tuples, or dicts for a named paramstyle)."""
        memo: dict[tuple[int, Any], Any] = {}
        out: list[Any] = []
        try:
            for row in rows:
                values = [row.get(name, default) for name, default in self.defaults]
                for i, process in self.processors:
                    values[i] = _bound_once(memo, i, values[i], process)
                out.append(tuple(values) if self.positional
                           else dict(zip(self.names, values, strict=True)))
        except Exception as exc:
            raise StatementError(f"a value could not be bound: {exc}", self.sql, None,
                                 exc) from exc
        return self.sql, out


def _bound_once(memo: dict[tuple[int, Any], Any], i: int, value: Any,
                process: Callable[[Any], Any]) -> Any:
    """`process(value)` for column `i`, computed once per distinct value in `memo`."""
    if value is None:
        return None
    key = (i, value)
    try:
        return memo[key]
    except KeyError:
        memo[key] = bound = process(value)
        return bound
    except TypeError:  # unhashable (a JSON value): bound each time
        return process(value)


@functools.lru_cache(maxsize=128)
def _many_shape(dialect: Dialect, stmt: ClauseElement) -> _ManyShape:
    compiled = stmt.compile(dialect=dialect)
    positional = compiled.positiontup is not None
    names = tuple(compiled.positiontup) if positional else tuple(compiled.params)
    fixed = {k: v for k, v in compiled.params.items() if v is not None}
    found = ((i, _bind_processor(compiled.binds[name].type, dialect))
             for i, name in enumerate(names))
    return _ManyShape(compiled.string, names, positional,
                      tuple((name, fixed.get(name)) for name in names),
                      tuple((i, p) for i, p in found if p is not None))


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A savepoint nested in the session's transaction, on both databases.

    pysqlite begins its own transaction only before an INSERT or UPDATE, so a SAVEPOINT sent
    first would start one by itself and releasing it would commit: a dry run's rollback would
    then undo nothing (SQLAlchemy documents this pysqlite flaw). So BEGIN is sent first.
    """
    _begin(session, "BEGIN")
    with session.begin_nested():
        yield


def begin_writing(session: Session) -> None:
    """Open the session's transaction as the writer now, if none is open (SQLite: BEGIN
    IMMEDIATE; PostgreSQL locks rows, not the database).

    A deferred SQLite transaction that reads and later writes must upgrade its lock, and
    SQLite refuses that at once, without waiting, when another connection committed in
    between: a transaction held open across pages takes the write lock at its start.
    """
    _begin(session, "BEGIN IMMEDIATE")


def _begin(session: Session, statement: str) -> None:
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        driver = conn.connection.driver_connection
        if driver is not None and not driver.in_transaction:
            conn.exec_driver_sql(statement)


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
