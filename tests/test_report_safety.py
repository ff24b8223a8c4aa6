"""Outside data is always data: markup, formula and control-character payloads in every field
Postalytics or HighLevel can send (names, emails, event labels, URLs, HighLevel's error
messages, campaign and location names, contact ids) come out literal in the report's CSV,
HTML, JSON, markdown summary and Prefect table artifacts; reasons are capped.

The markdown is rendered with markdown-it (CommonMark with raw HTML allowed, tables on: as
permissive as any UI) and the HTML opened in headless Chromium: what must not happen is
checked on what a reader would get, not on the text we wrote.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailsync.config import CampaignConfig, ConfigError, LocationConfig, Settings, load_settings
from mailsync.report.build import build_report
from mailsync.report.render import markdown_summary, write_report_files
from mailsync.report.safe import MAX_REASON, csv_cell, md_text, visible
from mailsync.store.engine import get_engine
from mailsync.store.models import Campaign, MailEvent, QuarantinedEvent, WriteIntent
from mailsync.store.reasons import QuarantineReason, Reason
from tasks.artifacts import table_chunks
from tasks.report import GROUP_FIELDS, WRITE_FIELDS, table_rows
from tests.browser import browser_page

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
LOC, DROP = "locX", "40211"
SCRIPT = "<script>alert(1)</script>"
TAG = "<b>bold</b>"
LINK = "[x](javascript:alert(1))"
IMAGE = "![i](http://evil.example/p.png)"
FORMULA = '=HYPERLINK("http://evil.example","x")'
CONTROL = "red\x1b[31m\x07bell\u202eevil"
PAYLOADS = {
    "campaign": f"Fall {TAG} {LINK} | `tick` *em*",
    "location": f"Boston {SCRIPT} {IMAGE}",
    "first": f"{FORMULA} {TAG}",
    "last": f"+1|{CONTROL}",
    "email": "=cmd@evil.example",
    "contact": "@SUM(1+1)",
    "message": f"{SCRIPT} {LINK} -2+3 {'x' * 600}",
    "label": f"{SCRIPT}|{TAG}",
}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """A store whose every outside field carries a payload."""
    engine = get_engine(f"sqlite:///{tmp_path / 'hostile.db'}")
    t0 = NOW - timedelta(hours=3)
    with Session(engine) as s:
        s.add(Campaign(drop_id=DROP, name=PAYLOADS["campaign"], location_id=LOC))
        s.add(MailEvent(key=f"e:{DROP}:1", drop_id=DROP, recipient_key="d:1", code="Mailed",
                        event_at=t0, first_name=PAYLOADS["first"], last_name=PAYLOADS["last"],
                        email=PAYLOADS["email"], url=f"javascript:alert(1)//{TAG}",
                        fetched_at=t0, run_id="r1"))
        for i, kind in enumerate(("tag", "note")):
            s.add(WriteIntent(intent_key=f"{kind}|1", kind=kind, location_id=LOC, drop_id=DROP,
                              recipient_key="d:1", code="Mailed", contact_id=PAYLOADS["contact"],
                              status="rejected", attempts=1, last_http_status=422,
                              reason_code=Reason.refused,
                              reason=f"HTTP 422 Unprocessable Entity: {PAYLOADS['message']}",
                              created_at=t0, first_attempt_at=t0, last_attempt_at=t0 + timedelta(
                                  seconds=i), run_id="r1"))
        s.add(QuarantinedEvent(
            fingerprint="q:1", drop_id=DROP, reason_code=QuarantineReason.unknown_code,
            reason=f"unknown event label {PAYLOADS['label']!r}", first_seen=t0, run_id="r1",
            payload=json.dumps({"Event": PAYLOADS["label"], "EventId": FORMULA,
                                "FirstName": PAYLOADS["first"], "Email": PAYLOADS["email"],
                                "Address": {"Street": "1 Main St"},
                                "Metadata": {"Url": "javascript:alert(1)"}})))
        s.commit()
    return engine


def _settings() -> Settings:
    return Settings(locations=(LocationConfig(id=LOC, name=PAYLOADS["location"],
                                              token_env="X"),),
                    campaigns=(CampaignConfig(drop_id=DROP, location=LOC,
                                              name=PAYLOADS["campaign"]),))


def _rendered(markdown: str) -> str:
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)


def _no_markup(html: str) -> None:
    """What a markdown renderer made of our text holds none of the payloads' markup."""
    for bad in ("<script", "<b>", "href=\"javascript", "<img", "<em>", "<strong>"):
        assert bad not in html, (bad, html[:3000])
    assert "\x1b" not in html and "\x07" not in html and "\u202e" not in html


def test_markdown_summary_and_table_artifacts_show_payloads_as_text(engine: Engine) -> None:
    report = build_report(engine, settings=_settings(), now=NOW)
    md = markdown_summary(report)
    html = _rendered(md)
    _no_markup(html)
    assert "<code>" not in html  # the campaign name's backticks are characters
    # Each payload is still there, to be read: escaped, not dropped.
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "[x](javascript:alert(1))" in html
    # A `|` inside a cell never splits it: every row of a table has its header's cells.
    widths: list[int] = []
    for ln in [*md.splitlines(), ""]:
        if ln.startswith("|"):
            widths.append(len(ln.replace("\\|", "").split("|")))
        elif widths:
            assert len(set(widths)) == 1, widths
            widths = []
    # The Prefect UI renders table artifact cells as markdown: the same rule applies.
    for fields, df in ((GROUP_FIELDS, report.problem_groups), (WRITE_FIELDS, report.problems)):
        for row in table_chunks(table_rows(df, fields))[0]:
            for value in row.values():
                if isinstance(value, str):
                    _no_markup(MarkdownIt("commonmark", {"html": True}).renderInline(value))


def test_csv_cells_are_never_formulas(engine: Engine, tmp_path: Path) -> None:
    write_report_files(build_report(engine, settings=_settings(), now=NOW), tmp_path)
    for name in ("problems.csv", "problem_writes.csv", "quarantined.csv"):
        with (tmp_path / name).open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert len(rows) > 1, name
        for row in rows[1:]:
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
        flat = "\n".join(",".join(r) for r in rows)
        assert "'=***@evil.example" in flat, name  # the masked email, neutralised
        assert "\x1b" not in flat and "1 Main St" not in flat
    assert csv_cell("-2+3") == "'-2+3" and csv_cell("\tx") == "'\tx" and csv_cell("ok") == "ok"


def test_json_keeps_payloads_as_data_and_caps_reasons(engine: Engine, tmp_path: Path) -> None:
    write_report_files(build_report(engine, settings=_settings(), now=NOW), tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    group = data["problems"][0]
    assert group["campaign"] == visible(PAYLOADS["campaign"])  # the characters, unchanged
    assert group["location"] == visible(PAYLOADS["location"])
    assert group["recipient"] == visible(f"{PAYLOADS['first']} {PAYLOADS['last']}")
    assert group["email"] == "=***@evil.example"
    # The tag and the note were refused for different causes (tag_refused, note_refused).
    assert [g["writes"] for g in data["problems"]] == [len(g["detail"]) for g in
                                                        data["problems"]] == [1, 1]
    for w in (w for g in data["problems"] for w in g["detail"]):
        assert w["contact_id"] == PAYLOADS["contact"]
        assert len(w["reason"]) <= MAX_REASON and SCRIPT in w["reason"]
    q = data["quarantined"][0]
    assert q["event"] == visible(PAYLOADS["label"]) and q["email"] == "=***@evil.example"
    assert "1 Main St" not in json.dumps(data) and PAYLOADS["first"] not in json.dumps(
        data["quarantined"])


def test_html_shows_payloads_as_text_in_a_real_browser(engine: Engine, tmp_path: Path) -> None:
    write_report_files(build_report(engine, settings=_settings(), now=NOW), tmp_path,
                       formats=("html",))
    html = (tmp_path / "report.html").read_text()
    assert "<script" not in html and "javascript:alert(1)//" not in html  # the URL not shown
    with browser_page() as page:
        page.goto((tmp_path / "report.html").as_uri())
        text = page.inner_text("body")
        assert page.locator("script").count() == 0
        assert page.locator("b", has_text="bold").count() == 0
        assert page.locator("a").count() == 0 and page.locator("img").count() == 0
        for payload in (TAG, LINK, SCRIPT, FORMULA):
            assert payload in text, payload
        assert "\\u001b" in text and "\x1b" not in text  # control characters shown, inert


def test_md_text_escapes_what_makes_markdown() -> None:
    assert md_text("a|b") == "a\\|b"
    assert md_text("# not a heading") == "\\# not a heading"
    assert md_text(None) == "" and md_text(float("nan")) == ""
    assert _rendered(md_text(f"{LINK} {IMAGE} {TAG} `c` *e* _u_ &lt;")).count("<") == 2  # <p>


def test_a_bad_timezone_is_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('timezone = "Mars/Olympus_Mons"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert str(err.value) == (f"{path}: timezone: 'Mars/Olympus_Mons' is not an IANA time zone "
                              "name (e.g. UTC, America/Toronto, Europe/Paris)")
    path.write_text('timezone = "Europe/Paris"\n')
    assert load_settings(path, environ={}).timezone == "Europe/Paris"
    assert Settings().timezone == "UTC"


def test_run_summary_artifact_escapes_errors_and_names(engine: Engine) -> None:
    from mailsync.store.runs import ErrorKind, RunError, Scope
    from mailsync.sync.fetch import CampaignResult
    from mailsync.sync.runner import RunSummary
    from tasks.report import run_markdown

    report = build_report(engine, settings=_settings(), now=NOW)
    summary = RunSummary("run-1", "sync", campaigns=[CampaignResult(DROP, fetched=3)],
                         errors=[RunError(Scope.location, LOC, ErrorKind.remote,
                                          f"HighLevel said {SCRIPT} {LINK}")])
    md = run_markdown(summary, report)
    _no_markup(_rendered(md))
    # What to do comes first, before the counts.
    assert md.index("## Do this first") < md.index("## Campaigns")
