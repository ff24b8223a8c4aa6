"""Proof of the promise under stress: fault soak, bad config fuzzing, two syncs at once on
PostgreSQL, and no secret anywhere after a faulty run."""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, func, select

from mailsync.clients.http import check_base_url
from mailsync.config import ConfigError, load_settings
from mailsync.report import build as report
from mailsync.store.models import WriteIntent
from tests.sync_helpers import rig

SOAK = "error=0.10,slow=0.05,drop=0.02,burst429=0.03,slow_seconds=20"


def ledger_counts(engine) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        rows = s.exec(select(WriteIntent.status, func.count()).group_by(WriteIntent.status))
        return {status: n for status, n in rows.all()}


@pytest.mark.slow
def test_fault_soak_ends_exact_and_the_report_counts_equal_the_ledger(tmp_path):
    with rig(tmp_path, contacts=80, messy=True, timeout=0.5) as r:
        r.sb.set_faults(SOAK)
        for _ in range(6):
            r.sb.advance(24)
            r.sync()
        faults = r.sb.stats()["highlevel"]["total"]["faults"]
        assert min(faults.get(k, 0) for k in ("error", "slow", "drop", "burst429")) > 0, faults
        r.sb.set_faults(None)
        r.sync()
        end = r.end()
        assert end.exact, end.describe()
        rep = report.build_report(r.ctx.engine)
        totals = rep.totals()
        counts = ledger_counts(r.ctx.engine)
        for status in ("done", "rejected", "failed", "unknown", "pending"):
            assert totals[status] == counts.get(status, 0), status
        assert totals["planned"] == sum(counts.values())


def test_two_syncs_at_once_on_postgresql_write_nothing_twice(tmp_path, pg_url):
    with rig(tmp_path, pg_url, contacts=60, time_scale=0.1) as r:
        r.sb.advance(96)
        a, b = r.spawn("sync"), r.spawn("sync")
        out_a, _ = a.communicate(timeout=300)
        out_b, _ = b.communicate(timeout=300)
        assert a.returncode == 0, out_a
        assert b.returncode == 0, out_b
        # One of them may have found a location's lease held and left it: finish the job.
        r.sync()
        end = r.end()
        assert end.exact, end.describe()  # exact includes: no duplicate note anywhere
        writes = r.sb.stats()["writes"]
        assert writes["notes_created"] == end.expected_notes
        with Session(r.ctx.engine) as s:
            keys = s.exec(select(WriteIntent.intent_key)).all()
        assert len(keys) == len(set(keys))


# --- bad config -------------------------------------------------------------------------

toml_scalars = st.one_of(st.integers(-5, 10**6), st.booleans(), st.text(max_size=20),
                         st.floats(allow_nan=False, allow_infinity=False))
keys = st.sampled_from(["url", "base_url", "api_key_env", "id", "token_env", "drop_id",
                        "location", "country", "events", "retrigger", "contact_id_field",
                        "lookback_hours", "max_pages", "oauth", "x", "daily_reserve"])
tables = st.dictionaries(keys, toml_scalars | st.lists(toml_scalars, max_size=3), max_size=6)
documents = st.fixed_dictionaries({}, optional={
    "database": tables, "postalytics": tables, "highlevel": tables,
    "locations": st.lists(tables, max_size=3), "campaigns": st.lists(tables, max_size=3),
    "junk": toml_scalars})


def _toml(value: object) -> str:
    return json.dumps(value)  # JSON scalars and arrays are valid TOML values


def dump(doc: dict) -> str:
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {_toml(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            for item in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {_toml(v)}" for k, v in item.items()]
        else:
            lines.insert(0, f"{key} = {_toml(value)}")
    return "\n".join(lines)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(doc=documents | st.text(max_size=200).map(lambda t: {"__raw__": t}))
def test_fuzz_any_config_loads_or_fails_in_one_line(tmp_path, doc):
    path = tmp_path / "fuzz.toml"
    path.write_text(doc["__raw__"] if "__raw__" in doc else dump(doc), encoding="utf-8")
    try:
        load_settings(path, environ={})
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{path}:") and "\n" not in message and len(message) < 400


def test_plain_http_is_refused_except_on_loopback():
    for ok in ("http://127.0.0.1:8000/x", "http://localhost/x", "http://[::1]:9/x",
               "https://services.leadconnectorhq.com"):
        check_base_url(ok)
    for bad in ("http://services.leadconnectorhq.com", "http://10.0.0.5/api",
                "ftp://example.com"):
        with pytest.raises(ValueError):
            check_base_url(bad)


# --- secrets --------------------------------------------------------------------------

@pytest.mark.slow
def test_no_secret_in_logs_reports_database_or_errors_after_a_faulty_run(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with rig(tmp_path, contacts=40, messy=True, timeout=0.5) as r:
        secrets = [v for v in r.env.values() if len(v) >= 6]
        assert len(secrets) >= 4
        r.sb.set_faults(SOAK)
        r.sb.advance(72)
        r.sync()
        r.sb.revoke(r.settings.locations[0].id)  # a refused token: errors that name it
        r.sb.advance(24)
        summary = r.sync()
        assert summary.errors, "the revoked location should have failed"
        cli = r.cli("sync")  # the command line's own output and logs
        rep_dir = tmp_path / "reports"
        files = report.write_files(r.ctx.engine, rep_dir)
        report_cli = r.cli("report", "--out", str(tmp_path / "cli-reports"), "--format", "all")
        haystacks = {"log records": caplog.text, "errors": "\n".join(map(str, summary.errors)),
                     "cli output": cli.stdout + cli.stderr,
                     "report cli": report_cli.stdout + report_cli.stderr}
        for f in [*files, *(tmp_path / "cli-reports").iterdir()]:
            haystacks[f"report file {f.name}"] = f.read_text(errors="replace")
        with r.ctx.engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
                haystacks[f"table {table}"] = "\n".join(map(str, rows))
        found = [(where, s[:6]) for where, text in haystacks.items() for s in secrets
                 if s in text]
        assert not found, f"secrets found: {found}"
        # The OAuth location refreshed, so its rotated tokens are stored: encrypted.
        assert haystacks["table oauth_tokens"].strip()
