"""The store a run uses is never a surprise, and first use is safe under concurrency."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailsync.cli import app
from mailsync.config import load_settings
from mailsync.store.engine import dispose_engine, existing_identity, store_identity

CONFIG = """
[database]
url = "sqlite:///mailsync.db"

[[locations]]
id = "loc1"
name = "Boston office"
token_env = "HL_TOKEN_LOC1"

[[campaigns]]
drop_id = "40211"
location = "loc1"
"""


def test_a_relative_sqlite_path_names_a_file_beside_the_config(tmp_path, monkeypatch):
    conf_dir, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf_dir.mkdir()
    elsewhere.mkdir()
    (conf_dir / "mailsync.toml").write_text(CONFIG)
    monkeypatch.chdir(elsewhere)  # a Prefect worker's pull step moves the working directory
    monkeypatch.delenv("MAILSYNC_DATABASE_URL", raising=False)
    settings = load_settings(conf_dir / "mailsync.toml", environ={})
    assert settings.database.url == f"sqlite:///{conf_dir / 'mailsync.db'}"


def test_a_relative_sqlite_url_from_the_environment_is_relative_to_where_it_runs(tmp_path,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, environ={"MAILSYNC_DATABASE_URL": "sqlite:///data/x.db"})
    assert settings.database.url == f"sqlite:///{tmp_path / 'data' / 'x.db'}"
    pg = "postgresql+psycopg://u:pw@db.example:5432/mailsync"
    assert load_settings(None, environ={"MAILSYNC_DATABASE_URL": pg}).database.url == pg


def test_each_store_has_an_identity_of_its_own_that_never_changes(db_url, tmp_path):
    other = f"sqlite:///{tmp_path / 'other' / 'mailsync.db'}"
    assert existing_identity(other) is None  # looking does not create a store
    first, again = store_identity(db_url), store_identity(db_url)
    assert first == again and len(first.store_id) == 32
    assert store_identity(other).store_id != first.store_id
    assert "pw" not in first.url


def test_every_command_says_which_store_it_opened(tmp_path, monkeypatch):
    (tmp_path / "mailsync.toml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILSYNC_DATABASE_URL", raising=False)
    monkeypatch.delenv("MAILSYNC_CONFIG", raising=False)
    runner = CliRunner()
    before = runner.invoke(app, ["config", "check"])
    assert "not created yet" in before.output and not (tmp_path / "mailsync.db").exists()
    upgraded = runner.invoke(app, ["db", "upgrade"])
    ident = store_identity(f"sqlite:///{tmp_path / 'mailsync.db'}")
    assert upgraded.exit_code == 0 and ident.store_id in upgraded.output
    checked = runner.invoke(app, ["config", "check"])
    assert ident.store_id in checked.output and str(tmp_path / "mailsync.db") in checked.output
    report = runner.invoke(app, ["report"])
    assert f"store: {ident.describe()}" in report.output


def _upgrade(url: str) -> int:
    os.environ["MAILSYNC_DATABASE_URL"] = url
    os.environ.pop("MAILSYNC_CONFIG", None)
    result = CliRunner().invoke(app, ["db", "upgrade"])
    return result.exit_code if result.exception is None or result.exit_code else 99


def test_thirty_concurrent_first_upgrades_of_one_sqlite_file_all_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    # Forked after import, so thirty processes race on the first migration itself.
    with multiprocessing.get_context("fork").Pool(30) as pool:
        codes = pool.map(_upgrade, [url] * 30)
    assert codes == [0] * 30
    dispose_engine(url)
    assert existing_identity(url) is not None


@pytest.mark.postgres
def test_concurrent_first_upgrades_of_one_postgresql_schema_all_succeed(pg_url):
    with multiprocessing.get_context("fork").Pool(8) as pool:
        codes = pool.map(_upgrade, [pg_url] * 8)
    assert codes == [0] * 8


def test_config_examples_resolve_beside_their_file():
    example = Path(__file__).resolve().parents[1] / "mailsync.example.toml"
    settings = load_settings(example, environ={})
    assert settings.database.url.startswith(f"sqlite:///{example.parent}")
