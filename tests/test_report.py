"""The report over a store built by hand: every problem kind, counts, filters, formats, CLI."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy.engine import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from mailsync.cli.demo import write_sandbox_config
from mailsync.cli.report import parse_when, register
from mailsync.codes import EventCode, tag_for
from mailsync.report.build import build_report, write_files
from mailsync.report.render import markdown_summary
from mailsync.report.rules import DRIFT_DETAIL, mask_email, mask_emails_in
from mailsync.store.engine import get_engine
from mailsync.store.models import Campaign, MailEvent, QuarantinedEvent, SyncRun, WriteIntent
from mailsync.store.reasons import Reason

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
LOC_A, LOC_B = "locAAAAAAAAAAAAAAAAA", "locBBBBBBBBBBBBBBBBB"
US, CA = "40211", "40245"
# The journey of the US campaign's 20 pieces: how many recipients reached each code.
US_REACH = {EventCode.MailPieceCreated: 20, EventCode.Mailed: 18, EventCode.InTransit: 15,
            EventCode.InLocalArea: 12, EventCode.ProcessedForDelivery: 10,
            EventCode.ReturnedToSender: 1, EventCode.pURLOpened: 4}

# intent label → (ledger fields, the problem kind the report must give; None: not a problem)
CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "done": ({"status": "done", "attempts": 1, "last_http_status": 201}, None),
    "no_contact": ({"status": "rejected", "attempts": 1, "contact_id": None,
                    "reason_code": Reason.no_contact,
                    "reason": "Ada Byrne (Postalytics id 88001)"},
                   "no_contact"),
    "gone": ({"status": "rejected", "attempts": 1, "last_http_status": 404,
              "reason_code": Reason.contact_gone,
              "reason": "HTTP 404 Not Found: Contact not found"}, "no_contact"),
    "gone_400": ({"status": "pending", "attempts": 1, "last_http_status": 400,
                  "reason_code": Reason.contact_gone,
                  "reason": "HTTP 400 Bad Request: Contact not found"}, "contact_gone"),
    "note_422": ({"kind": "note", "status": "rejected", "attempts": 1, "last_http_status": 422,
                  "reason_code": Reason.refused,
                  "reason": "HTTP 422 Unprocessable Entity: body is too long"}, "note_refused"),
    "token_403": ({"status": "rejected", "attempts": 1, "last_http_status": 403,
                   "reason_code": Reason.token_refused,
                   "reason": "HTTP 403 Forbidden: The token does not have access to this "
                             "location."}, "token"),
    "failed": ({"status": "failed", "attempts": 3, "last_http_status": 503,
                "reason_code": Reason.unanswered,
                "reason": "gave up after 3 attempts: HTTP 503"}, "failed"),
    "unknown": ({"kind": "note", "status": "unknown", "attempts": 1,
                 "reason_code": Reason.sent_unanswered, "reason": "ReadTimeout"}, "unknown"),
    "quota": ({"status": "pending", "reason_code": Reason.daily_quota}, "quota"),
    "overdue": ({"status": "pending", "created_at": NOW - timedelta(hours=30)}, "overdue"),
    "never": ({"status": "pending", "created_at": NOW - timedelta(hours=3)}, "never_attempted"),
    "fresh": ({"status": "pending", "created_at": NOW - timedelta(minutes=1)}, None),
    "lookup": ({"status": "pending", "reason_code": Reason.lookup_unanswered,
                "reason": "gave up after 4 attempts"}, "lookup_retry"),
    "drift": ({"status": "pending", "attempts": 1, "reason_code": Reason.drift,
               "reason": DRIFT_DETAIL}, "drift"),
}


def make_store(url: str) -> Engine:
    """A store with two campaigns, a US journey, quarantine, runs and one row per case."""
    engine = get_engine(url)
    t0 = NOW - timedelta(days=4)
    with Session(engine) as s:
        s.add(Campaign(drop_id=US, name="Fall US Postcard", country="US", location_id=LOC_A))
        s.add(Campaign(drop_id=CA, name="Fall CA Postcard", country="CA", location_id=LOC_B))
        for i in range(20):
            for j, (code, n) in enumerate(US_REACH.items()):
                if i < n:
                    s.add(MailEvent(key=f"e:{US}:{i}-{code}", drop_id=US,
                                    recipient_key=f"d:{88000 + i}", code=code.value,
                                    event_at=t0 + timedelta(hours=j), first_name="Ada",
                                    last_name=f"Byrne{i}", email=f"ada.byrne.{i}@example.com",
                                    fetched_at=t0, run_id="run-1"))
        s.add(MailEvent(key=f"e:{CA}:0", drop_id=CA, recipient_key="d:99000",
                        code="MailPieceCreated", event_at=t0, first_name="Ken",
                        email="ken@example.ca", fetched_at=t0, run_id="run-1"))
        s.add(QuarantinedEvent(fingerprint="q:1", drop_id=US, reason="missing event date",
                               payload='{"Email": "grace@example.com", "Event": "Mailed"}',
                               first_seen=t0, run_id="run-1"))
        s.add(SyncRun(id="run-1", kind="sync", started_at=t0, finished_at=NOW - timedelta(hours=1),
                      status="completed", counts=json.dumps({
                          "campaigns": [{"drop_id": US, "fetched": 250},
                                        {"drop_id": CA, "fetched": 3}],
                          "locations": [{"location_id": LOC_A}, {"location_id": LOC_B}],
                          "errors": []})))
        for i, (label, (fields, _)) in enumerate(CASES.items()):
            kind = fields.get("kind", "tag")
            row = {"intent_key": f"{kind}|{label}", "kind": kind, "location_id": LOC_A,
                   "drop_id": US, "recipient_key": f"d:{88000 + i}",
                   "event_key": f"e:{US}:{i}-Mailed", "code": "Mailed",
                   "contact_id": f"contact{i:02d}", "tag": tag_for(EventCode.Mailed),
                   "marker": f"ms-{i:016d}", "run_id": "run-1",
                   "created_at": NOW - timedelta(hours=2)}
            row.update(fields)
            if row.get("attempts"):
                row["first_attempt_at"] = row["last_attempt_at"] = NOW - timedelta(hours=2)
            s.add(WriteIntent(**row))
        s.add(WriteIntent(intent_key="tag|ca", kind="tag", location_id=LOC_B, drop_id=CA,
                          recipient_key="d:99000", code="MailPieceCreated", status="done",
                          contact_id="contactCA", created_at=NOW - timedelta(hours=2),
                          run_id="run-1"))
        s.commit()
    return engine


@pytest.fixture
def engine(db_url: str) -> Engine:
    return make_store(db_url)


def _by_label(report: Any) -> dict[str, str]:
    labels = {f"d:{88000 + i}": label for i, label in enumerate(CASES)}
    return {labels[r["recipient_key"]]: r["problem"] for r in report.problem_records()}


def test_every_problem_kind_gets_its_reason_and_action(engine: Engine) -> None:
    report = build_report(engine, now=NOW)
    expected = {label: kind for label, (_, kind) in CASES.items() if kind}
    assert _by_label(report) == expected
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
    assert "overdue" not in _by_label(late).values()
    early = build_report(engine, now=NOW, pending_deadline=timedelta(hours=1))
    # "never" (3 h old) is now past the deadline too.
    assert _by_label(early)["never"] == "overdue"


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
    found = _by_label(build_report(engine, now=NOW))
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
