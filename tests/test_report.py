"""The report over a store built by hand: every problem kind, counts, filters, formats, CLI."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from sqlalchemy.engine import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from mailsync.cli.demo import write_sandbox_config
from mailsync.cli.report import parse_when, register
from mailsync.report.build import build_report, write_files
from mailsync.report.render import markdown_summary
from mailsync.report.rules import mask_email, mask_emails_in
from mailsync.store.models import SyncRun
from tests.report_store import (
    CA,
    CASES,
    LOC_A,
    LOC_B,
    NOW,
    US,
    US_REACH,
    make_store,
    problems_by_label,
)


@pytest.fixture
def engine(db_url: str) -> Engine:
    return make_store(db_url)


def test_every_problem_kind_gets_its_reason_and_action(engine: Engine) -> None:
    report = build_report(engine, now=NOW)
    expected = {label: kind for label, (_, kind) in CASES.items() if kind}
    assert problems_by_label(report) == expected
    rows = {r["problem"]: r for r in report.problem_records()}
    assert rows["note_refused"]["action"] == ("HighLevel refused the note: body is too long; "
                                              "fix and replay")
    assert rows["token"]["action"] == "the location's token was refused: renew it, then replay"
    assert rows["quota"]["action"] == "waits for tomorrow's quota; nothing to do"
    assert rows["unknown"]["action"] == "outcome not known yet: the next run settles it"
    assert rows["no_contact"]["action"].startswith("no HighLevel contact: create it or fill")
    assert rows["failed"]["attempts"] == 3 and rows["failed"]["last_http_status"] == 503
    assert rows["note_refused"]["email"].endswith("***@example.com")
    assert rows["note_refused"]["first_attempt_at"] == (NOW - timedelta(hours=2)).isoformat()


def test_pending_deadline_is_configurable(engine: Engine) -> None:
    late = build_report(engine, now=NOW, pending_deadline=timedelta(hours=48))
    assert "overdue" not in problems_by_label(late).values()
    early = build_report(engine, now=NOW, pending_deadline=timedelta(hours=1))
    # "never" (3 h old) is now past the deadline too.
    assert problems_by_label(early)["never"] == "overdue"


def test_summary_counts_per_campaign_and_location(engine: Engine) -> None:
    report = build_report(engine, now=NOW)
    us = report.summary.set_index("drop_id").loc[US]
    # Seen: distinct events, stored or quarantined, not the 250 reads the run counted.
    assert us["events_seen"] == sum(US_REACH.values()) + 1
    assert us["events_new"] == sum(US_REACH.values())
    assert us["quarantined"] == 1
    assert report.runs.set_index("run_id").loc["run-1", "events_read"] == 253
    assert us["planned"] == len(CASES)
    statuses = [f["status"] for f, _ in CASES.values()]
    for st in ("done", "rejected", "failed", "unknown", "pending"):
        assert us[st] == statuses.count(st)
    assert us["problems"] == sum(1 for _, k in CASES.values() if k)
    ca = report.summary.set_index("drop_id").loc[CA]
    assert (ca["location_id"], ca["planned"], ca["done"], ca["problems"]) == (LOC_B, 1, 1, 0)
    md = markdown_summary(report)
    assert "| Fall US Postcard | 40211 |" in md and "renew it, then replay" in md


def test_filters_by_campaign_window_and_run(engine: Engine) -> None:
    only_ca = build_report(engine, drop_ids=[CA], now=NOW)
    assert list(only_ca.summary["drop_id"]) == [CA] and only_ca.problems.empty
    later = build_report(engine, since=NOW - timedelta(hours=1), now=NOW)
    assert later.problems.empty and later.summary["planned"].sum() == 1  # only "fresh"
    by_run = build_report(engine, run_id="run-1", now=NOW)
    assert len(by_run.problems) == len(build_report(engine, now=NOW).problems)
    with pytest.raises(LookupError):
        build_report(engine, run_id="no-such-run")


def test_funnel_counts_how_far_pieces_got(engine: Engine) -> None:
    funnel = build_report(engine, now=NOW).funnel
    us = funnel[funnel["drop_id"] == US].set_index("code")
    for code, n in US_REACH.items():
        assert us.loc[code.value, "recipients"] == n
        assert us.loc[code.value, "share"] == pytest.approx(n / 20)
    assert us.loc["pURLOpened", "stage"] == "response"
    assert us.loc["ReRouted", "stage"] == "exception" and us.loc["ReRouted", "recipients"] == 0
    assert "Addressed" not in us.index  # not reported by this print network: no fake drop-off
    ca = funnel[funnel["drop_id"] == CA]
    assert "InTransit" not in set(ca["code"])  # Canada Post has no scans after hand-off


def test_token_refused_in_a_run_explains_its_pending_rows(db_url: str) -> None:
    engine = make_store(db_url)
    with Session(engine) as s:
        s.add(SyncRun(id="run-2", kind="sync", started_at=NOW - timedelta(minutes=30),
                      finished_at=NOW - timedelta(minutes=20), status="failed",
                      counts=json.dumps({"campaigns": [], "locations": [], "errors": [
                          f"location {LOC_A}: HighLevel refused the token for location "
                          f"{LOC_A}: HTTP 401 Unauthorized: Invalid token"]})))
        s.commit()
    found = problems_by_label(build_report(engine, now=NOW))
    assert found["never"] == found["overdue"] == "token"
    assert "fresh" not in found  # planned after that run: the next run sends it
    assert found["quota"] == "quota" and found["drift"] == "drift"


def test_files_json_and_csv_mask_personal_data(engine: Engine, tmp_path: Path) -> None:
    paths = write_files(engine, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["totals"]["problems"] == sum(len(g["detail"]) for g in data["problems"]) > 0
    for p in paths:
        assert "ada.byrne" not in p.read_text() and "grace@example.com" not in p.read_text()
    assert sorted(p.name for p in paths) == sorted(["problems.csv", "problem_writes.csv",
                                                    "quarantined.csv", "report.html",
                                                    "report.json"])
    groups = (tmp_path / "problems.csv").read_text().splitlines()
    assert groups[0].startswith("group,step,problem") and len(groups) == len(data["problems"]) + 1
    writes = (tmp_path / "problem_writes.csv").read_text().splitlines()
    assert len(writes) == data["totals"]["problems"] + 1


def test_masking() -> None:
    assert mask_email("ada.byrne@example.com") == "a***@example.com"
    assert mask_email(None) == "" and mask_email("not an email") == ""
    assert mask_emails_in('{"Email": "grace@example.com"}') == '{"Email": "g***@example.com"}'


def test_parse_when() -> None:
    assert parse_when("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_when("7d", NOW) == NOW - timedelta(days=7)
    assert parse_when("2026-11-20", NOW) == datetime(2026, 11, 20, tzinfo=UTC)
    assert parse_when(None) is None
    from mailsync.config import ConfigError

    with pytest.raises(ConfigError):
        parse_when("yesterday-ish")


def _cli_config(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    manifest = {"postalytics_api_key": "pk_test_0123456789abcdef01234567",
                "postalytics_base_url": "http://127.0.0.1:9/postalytics/api/v1",
                "highlevel_base_url": "http://127.0.0.1:9/highlevel",
                "locations": [{"id": LOC_A, "auth": "pit", "token": "pit-secret-token-123456"},
                              {"id": LOC_B, "auth": "pit", "token": "pit-secret-token-654321"}],
                "campaigns": [{"drop_id": US, "name": "Fall US Postcard", "country": "US",
                               "location": LOC_A},
                              {"drop_id": CA, "name": "Fall CA Postcard", "country": "CA",
                               "location": LOC_B}]}
    path, env = write_sandbox_config(manifest, tmp_path, db_url)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return path


def test_cli_report_writes_every_format(db_url: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    make_store(db_url)
    config = _cli_config(tmp_path, db_url, monkeypatch)
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    out = tmp_path / "reports"
    res = runner.invoke(app, ["report", "--config", str(config), "--format", "all",
                              "--out", str(out), "--campaign", US])
    assert res.exit_code == 0, res.output
    assert "do this first" in res.output and "pit-secret-token" not in res.output
    assert {p.name for p in out.iterdir()} == {"problems.csv", "problem_writes.csv",
                                               "quarantined.csv", "report.json",
                                               "report.html"}
    bad = runner.invoke(app, ["report", "--config", str(config), "--run", "nope"])
    assert bad.exit_code == 2 and "no run with id" in bad.output
    bad = runner.invoke(app, ["report", "--config", str(config), "--format", "pdf"])
    assert bad.exit_code == 2


def test_terminal_table_shows_reason_and_action(engine: Engine) -> None:
    from rich.console import Console

    from mailsync.cli.report import print_report

    console = Console(record=True, width=250)
    print_report(build_report(engine, now=NOW), console, limit=5)
    text = console.export_text()
    assert "the location's token was refused: renew it, then replay" in text
    assert "HighLevel refused the note: body is too long" in text
    assert f"... {sum(1 for _, k in CASES.values() if k) - 5} more" in text


def test_unstored_events_lists_what_postalytics_has_and_the_store_lacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsync.config import load_settings
    from mailsync.report.verify import unstored_events
    from mailsync.sandbox.server import SandboxServer
    from mailsync.sync.context import SyncContext
    from mailsync.sync.runner import run_sync

    with SandboxServer(seed=2, contacts=30, time_scale=0.05) as sb:
        path, env = write_sandbox_config(sb.manifest(), tmp_path, f"sqlite:///{tmp_path}/u.db")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        ctx = SyncContext(load_settings(path), timeout=2.0)
        sb.advance(48)
        asyncio.run(run_sync(ctx))
        assert asyncio.run(unstored_events(ctx)) == []
        stored = {e["event_id"] for c in sb.truth()["campaigns"] for e in c["events"]}
        sb.advance(24)
        missing = asyncio.run(unstored_events(ctx))
        truth_new = {f"e:{c['drop_id']}:{e['event_id']}" for c in sb.truth()["campaigns"]
                     for e in c["events"] if e["event_id"] not in stored}
        assert truth_new and {m["event_key"] for m in missing} == truth_new
        # A window that starts after every event finds nothing.
        assert asyncio.run(unstored_events(ctx, since=datetime(2030, 1, 1, tzinfo=UTC))) == []
        report = build_report(ctx.engine, unstored=missing)
        assert len(report.unstored) == len(truth_new)
        assert not report.unstored["email"].str.contains(r"^[^*]+@", regex=True).any()
