"""The few writes everything shares: insert-if-new, which both databases do atomically."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel


def insert_ignore(
    session: Session, objs: Sequence[SQLModel], conflict_cols: Iterable[str] | None = None,
    returning: str | None = None,
) -> list[Any]:
    """Insert model rows, skipping any that collide with a unique key; returns the inserted
    rows' `returning` column (default: the first primary-key column).

    Safe under races: two connections inserting the same key leave one row and no error.
    """
    if not objs:
        return []
    table: Table = type(objs[0]).__table__  # type: ignore[attr-defined]
    # An autoincrement id left as None must be omitted, not sent as NULL (PostgreSQL refuses it).
    rows: list[dict[str, Any]] = [
        o.model_dump(exclude={"id"} if getattr(o, "id", 0) is None else None) for o in objs
    ]
    dialect = session.get_bind().dialect.name
    ins = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if ins is None:
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    cols = list(conflict_cols) if conflict_cols is not None else None
    out = table.c[returning] if returning else next(iter(table.primary_key.columns))
    # One single-row statement executed for many parameter sets: SQLAlchemy batches it into
    # multi-row INSERTs itself ("insertmanyvalues") and compiles it once per process, where a
    # multi-row `.values(rows)` was compiled afresh for every page. RETURNING names the rows
    # actually inserted on both databases (psycopg's rowcount is -1 here).
    stmt = ins(table).on_conflict_do_nothing(index_elements=cols).returning(out)
    return list(session.execute(stmt, rows).scalars().all())
