"""A store that cannot be used is one line: which store, what is wrong, what to do; exit 3.

Real failures where they can be had: PostgreSQL on a closed port, a role that does not
exist, a read-only transaction; SQLite in a folder nobody can create files in (/proc), a
read-only bind mount and a `mode=ro` URI, a full tmpfs, a file that is not a database, a
schema newer than this version. Tests run as root here, and root ignores file modes, so
chmod proves nothing: the read-only cases use a read-only mount (when this machine allows
mounting) and SQLite's own read-only mode. The few that cannot be caused (PostgreSQL's disk
full) are translated from the driver's real exception types.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.errors
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from mailsync.store.engine import dispose_engine, get_engine, upgrade_database
from mailsync.store.errors import StoreError, StoreProblem, classify, translate
from mailsync.sync.failures import FailureKind, describe_failure

COMMANDS = (["sync"], ["report"], ["replay"], ["verify"], ["db", "upgrade"])
CLOSED_PG = "postgresql+psycopg://postgres:hunter2secret@127.0.0.1:1/test"


def config_for(tmp_path: Path, url: str) -> Path:
    """A config whose APIs are on a closed port: the store must be what fails first."""
    path = tmp_path / "mailsync.toml"
    path.write_text(f"""
[database]
url = "{url}"
[postalytics]
base_url = "http://127.0.0.1:9/api/v1"
[highlevel]
base_url = "http://127.0.0.1:9/hl"
[[locations]]
id = "loc-1"
name = "Boston office"
token_env = "T_BOSTON"
[[campaigns]]
drop_id = "40211"
location = "loc-1"
""")
    return path


def cli(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`mailsync ...` in a child process, as a person runs it."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("MAILSYNC_DATABASE_URL", "MAILSYNC_DEBUG")}
    full.update({"T_BOSTON": "tok-abcdef123456", "POSTALYTICS_API_KEY": "key-123456",
                 "MAILSYNC_CONFIG": str(config), "COLUMNS": "200", **env})
    return subprocess.run([sys.executable, "-m", "mailsync", *args], env=full, text=True,
                          capture_output=True, timeout=120)


def assert_one_store_line(res: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 3, no traceback, the whole output under 5 lines, and the error line naming
    the store and what is wrong."""
    out = res.stdout + res.stderr
    assert res.returncode == 3, out
    assert "Traceback" not in out and "sqlalche.me" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) < 5, out
    error = next(ln for ln in lines if ln.startswith("error: store "))
    for word in words:
        assert word in error, error
    return error


# -- translation, with the drivers' real exception types --------------------------------------

def _sqlite_full() -> sqlite3.Error:
    conn = sqlite3.connect(":memory:")
    conn.execute("PRAGMA max_page_count = 2")
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 4000,)] * 10)
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("SQLite took more pages than allowed")


def _sqlite_read_only(tmp_path: Path) -> sqlite3.Error:
    path = tmp_path / "ro.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("INSERT INTO t VALUES (1)")
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("a read-only connection wrote")


def test_sqlite_errors_are_classified_by_their_result_codes(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a database " * 200)
    try:
        sqlite3.connect(garbage).execute("SELECT * FROM sqlite_master").fetchall()
    except sqlite3.Error as exc:
        not_a_db = exc
    try:
        sqlite3.connect("/proc/no/such/dir/x.db")
    except sqlite3.Error as exc:
        cannot_open = exc
    assert classify(_sqlite_full()) is StoreProblem.disk_full
    assert classify(_sqlite_read_only(tmp_path)) is StoreProblem.read_only
    assert classify(not_a_db) is StoreProblem.damaged
    assert classify(cannot_open) is StoreProblem.cannot_open
    assert classify(sqlite3.IntegrityError("UNIQUE constraint failed: t.x")) is None


@pytest.mark.parametrize(("error", "problem"), [
    (psycopg.errors.DiskFull("could not extend file \"base/1/2\": No space left on device"),
     StoreProblem.disk_full),
    (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only "
                                           "transaction"), StoreProblem.read_only),
    (psycopg.errors.InsufficientPrivilege("permission denied for table write_ledger"),
     StoreProblem.refused),
    (psycopg.errors.InvalidPassword("password authentication failed for user \"ms\""),
     StoreProblem.refused),
    (psycopg.errors.UndefinedTable("relation \"write_ledger\" does not exist"),
     StoreProblem.not_migrated),
    (psycopg.errors.UniqueViolation("duplicate key"), None),
])
def test_postgres_errors_are_classified_by_sqlstate(error: Exception,
                                                    problem: StoreProblem | None) -> None:
    wrapped = OperationalError("INSERT INTO write_ledger ...", {"p": 1}, error)
    assert classify(wrapped) is problem


def test_a_store_error_is_one_line_naming_the_store_without_its_password() -> None:
    orig = psycopg.errors.DiskFull("could not extend file\nHINT: check free disk space.")
    wrapped = OperationalError("INSERT INTO write_ledger (a) VALUES (%(a)s)", {"a": "x"}, orig)
    found = translate(wrapped, CLOSED_PG)
    assert isinstance(found, StoreError) and found.problem is StoreProblem.disk_full
    line = str(found)
    assert "\n" not in line and "hunter2secret" not in line and "INSERT" not in line
    assert line.startswith("store postgresql+psycopg://postgres:***@127.0.0.1:1/test: ")
    assert "free space" in line  # what to do
    failure = describe_failure(found)
    assert failure is not None and failure.kind is FailureKind.store and not failure.transient


def test_the_engine_raises_store_errors_itself(tmp_path: Path) -> None:
    """Whoever touches the store (CLI, Prefect task, library) gets the same StoreError."""
    with pytest.raises(StoreError) as info:
        get_engine(CLOSED_PG)
    assert info.value.problem is StoreProblem.unreachable
    assert "hunter2secret" not in str(info.value)
    url = f"sqlite:///{tmp_path / 'ok.db'}"
    upgrade_database(url)
    ro = f"sqlite:///file:{tmp_path / 'ok.db'}?mode=ro&uri=true"
    try:
        with pytest.raises(StoreError) as info, get_engine(ro).begin() as conn:
            conn.execute(sa.text("INSERT INTO store_meta (key, value) VALUES ('k', 'v')"))
        assert info.value.problem is StoreProblem.read_only
    finally:
        dispose_engine(ro)


# -- whole commands: one line and exit 3 -------------------------------------------------------

@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_postgres_where_nothing_listens(tmp_path: Path, args: list[str]) -> None:
    config = config_for(tmp_path, CLOSED_PG)
    error = assert_one_store_line(cli(config, *args), "127.0.0.1:1", "cannot connect",
                                  "database server is running")
    assert "hunter2secret" not in error


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_sqlite_in_a_folder_that_cannot_be_created(tmp_path: Path, args: list[str]) -> None:
    # Even root cannot create a folder or a file under /proc.
    config = config_for(tmp_path, "sqlite:////proc/mailsync-test/mailsync.db")
    assert_one_store_line(cli(config, *args), "/proc/mailsync-test/mailsync.db",
                          "cannot open the SQLite file")


def test_postgres_refusing_the_user_and_a_missing_database() -> None:
    base = os.environ.get("MAILSYNC_TEST_DATABASE_URL", "")
    if not base:
        pytest.skip("postgres: MAILSYNC_TEST_DATABASE_URL is not set")
    url = sa.engine.make_url(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with pytest.raises(StoreError) as role:
        get_engine(url.set(username="no_such_role_ms").render_as_string(hide_password=False))
    assert role.value.problem is StoreProblem.refused
    with pytest.raises(StoreError) as db:
        get_engine(url.set(database="no_such_db_ms").render_as_string(hide_password=False))
    assert db.value.problem is StoreProblem.missing
    assert "createdb" in str(db.value)


def _read_only(url: str) -> str:
    """The same store, opened read-only: SQLite's `mode=ro`, PostgreSQL read-only sessions."""
    if url.startswith("sqlite:///"):
        return f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
    return f"{url}%20-cdefault_transaction_read_only%3Don"


@pytest.mark.parametrize("args", [["sync"], ["replay"]], ids=" ".join)
def test_a_read_only_store(db_url: str, tmp_path: Path, args: list[str]) -> None:
    upgrade_database(db_url)
    config = config_for(tmp_path, _read_only(db_url))
    assert_one_store_line(cli(config, *args), "read-only", "write access")


def test_db_upgrade_on_a_read_only_store_that_needs_it(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("sqlite:///"):
        sqlite3.connect(db_url.removeprefix("sqlite:///")).close()  # exists, but empty
    config = config_for(tmp_path, _read_only(db_url))
    assert_one_store_line(cli(config, "db", "upgrade"), "read-only")


@pytest.mark.parametrize("args", [["sync"], ["report"], ["db", "upgrade"]], ids=" ".join)
def test_a_store_a_newer_mailsync_migrated(db_url: str, tmp_path: Path,
                                           args: list[str]) -> None:
    upgrade_database(db_url)
    with get_engine(db_url).begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    dispose_engine(db_url)
    config = config_for(tmp_path, db_url)
    assert_one_store_line(cli(config, *args), "9999_from_the_future", "newer than this mailsync")


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "mailsync.db"
    path.write_text("these are somebody's notes, not a database\n" * 100)
    config = config_for(tmp_path, f"sqlite:///{path}")
    assert_one_store_line(cli(config, "sync"), "not a usable database", "backup")


# -- mounts: a read-only file system and a full disk, where this machine allows mounting -----

@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    subprocess.run(["umount", str(point)], capture_output=True)


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip() or done.returncode})")


@pytest.mark.parametrize("args", [["sync"], ["replay"], ["db", "upgrade"]], ids=" ".join)
def test_sqlite_on_a_read_only_file_system(tmp_path: Path, mount_point: Path,
                                           args: list[str]) -> None:
    source = tmp_path / "src"
    source.mkdir()
    if args != ["db", "upgrade"]:
        upgrade_database(f"sqlite:///{source / 'mailsync.db'}")
    _mount("--bind", str(source), str(mount_point))
    _mount("-o", "remount,ro,bind", str(mount_point))
    config = config_for(tmp_path, f"sqlite:///{mount_point / 'mailsync.db'}")
    assert_one_store_line(cli(config, *args), "read-only")


def test_sqlite_on_a_full_disk(tmp_path: Path, mount_point: Path) -> None:
    _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point))
    url = f"sqlite:///{mount_point / 'mailsync.db'}"
    upgrade_database(url)
    dispose_engine(url)
    with (mount_point / "filler").open("wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError:
            pass
    config = config_for(tmp_path, url)
    assert_one_store_line(cli(config, "sync"), "disk holding the store is full", "free space")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    config = config_for(tmp_path, CLOSED_PG)
    for res in (cli(config, "--debug", "sync"), cli(config, "sync", MAILSYNC_DEBUG="1")):
        out = res.stdout + res.stderr
        assert res.returncode == 3 and "Traceback" in out and "StoreError" in out, out
        assert "hunter2secret" not in out
