"""Shared fixtures: an isolated Prefect home; a store on SQLite and, when set, PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

# Fixture modules: a test asks for `sandbox` or `prefect_server` by name, importing nothing.
pytest_plugins = ["tests.sandbox_fixtures", "tests.prefect_server"]

PG_URL = os.environ.get("MAILSYNC_TEST_DATABASE_URL", "")
REQUIRE_PG = os.environ.get("MAILSYNC_REQUIRE_POSTGRES") == "1"
_pg_ran = 0
"""PostgreSQL schemas this process created for tests."""
_pg_reported = 0
"""PostgreSQL-backed tests, as their reports say (from every xdist worker)."""


@pytest.fixture(autouse=True, scope="session")
def _isolated_prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Every test session gets its own Prefect database and settings; nothing phones home.
    home = tmp_path_factory.mktemp("prefect-home")
    old = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def pg_schema_url(base_url: str, schema: str) -> str:
    """A URL whose connections live in their own schema, so tests never share tables."""
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_pg_schema() -> Iterator[str]:
    """A URL on a new PostgreSQL schema of its own, dropped afterwards."""
    global _pg_ran
    if not PG_URL:
        if REQUIRE_PG:
            pytest.fail("MAILSYNC_REQUIRE_POSTGRES=1 but MAILSYNC_TEST_DATABASE_URL is not set")
        pytest.skip("postgres: MAILSYNC_TEST_DATABASE_URL is not set")
    from mailsync.store.engine import dispose_engine, normalise_url

    base = normalise_url(PG_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL not reachable: {exc}")
        pytest.skip(f"postgres: not reachable ({exc.__class__.__name__})")
    _pg_ran += 1
    try:
        yield pg_schema_url(base, schema)
    finally:
        dispose_engine(pg_schema_url(base, schema))
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    with fresh_pg_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file for one test."""
    return f"sqlite:///{tmp_path / 'mailsync.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(name)


@pytest.fixture(autouse=True)
def _tell_postgres_use(request: pytest.FixtureRequest) -> Iterator[None]:
    # Carried on the test's report, so the count holds when xdist workers run the tests.
    before = _pg_ran
    yield
    if _pg_ran > before:
        request.node.user_properties.append(("mailsync_pg_schemas", _pg_ran - before))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _pg_reported
    if report.when == "teardown" and any(k == "mailsync_pg_schemas"
                                         for k, _ in report.user_properties):
        _pg_reported += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    terminalreporter.write_line(f"mailsync: {_pg_reported} PostgreSQL-backed tests ran")
