"""The report's parts on their own: the one markdown-table helper, and verify's read-back of
one contact (tags, then notes) against a HighLevel stand-in over `httpx.MockTransport`."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

import httpx
import pandas as pd
import pytest
from sqlmodel import Session

from mailsync.clients.highlevel import HighLevelClient
from mailsync.clients.ratelimit import WindowPacer
from mailsync.codes import EventCode, tag_for
from mailsync.report.build import build_report
from mailsync.report.markdown import frame_table, markdown_table
from mailsync.report.rules import DRIFT_DETAIL
from mailsync.report.verify import GONE, _check_contact
from mailsync.store.models import SyncRun, WriteIntent, WriteKind, WriteStatus
from mailsync.store.runs import ErrorKind, RunError, Scope
from mailsync.sync.runner import RunSummary
from tests.report_store import LOC_A, NOW, make_store, problems_by_label

LOC, CID = "loc-verify", "c1"


def test_markdown_table_keeps_every_cell_in_its_column() -> None:
    lines = markdown_table(("problem", "writes", "what to do"),
                           [("token", 2, "renew it | then replay"), ("quota", None, "a\nb")],
                           right={"writes"})
    assert lines == ["| problem | writes | what to do |", "|---|---:|---|",
                     "| token | 2 | renew it \\| then replay |", "| quota |  | a b |"]


def test_frame_table_says_when_a_window_is_empty() -> None:
    df = pd.DataFrame({"drop_id": ["40211"], "planned": [float("nan")]})
    assert frame_table(df, ["drop_id", "planned"])[2] == "| 40211 |  |"
    assert frame_table(df.iloc[0:0], ["drop_id"]) == ["(nothing in this window)"]


def _row(i: int, kind: WriteKind, status: WriteStatus = WriteStatus.done,
         code: EventCode = EventCode.Mailed) -> WriteIntent:
    return WriteIntent(id=i, intent_key=f"{kind}|{i}", kind=kind, location_id=LOC,
                       drop_id="40211", recipient_key="d:1", code=code.value, contact_id=CID,
                       tag=tag_for(code) if kind != WriteKind.note else None,
                       marker=f"ms-{i:016d}" if kind == WriteKind.note else None,
                       status=status)


class FakeContact:
    """One HighLevel contact's tags and notes; `down` answers a path 503, `gone` 404."""

    def __init__(self, tags: list[str], bodies: list[str]) -> None:
        self.tags, self.bodies = tags, bodies
        self.gone = False
        self.down: set[str] = set()
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.paths.append(path)
        if self.gone:
            return httpx.Response(404, json={"message": "Contact not found"})
        if path in self.down:
            return httpx.Response(503, json={"message": "down"})
        if path.endswith("/notes"):
            return httpx.Response(200, json={"notes": [{"id": f"n{i}", "body": b}
                                                       for i, b in enumerate(self.bodies)]})
        return httpx.Response(200, json={"contact": {"id": CID, "tags": self.tags}})


def check(fake: FakeContact, rows: list[WriteIntent]) -> tuple[list[Any], str | None]:
    async def go() -> tuple[list[Any], str | None]:
        async with HighLevelClient("https://services.leadconnectorhq.com", LOC, "pit-token",
                                   transport=httpx.MockTransport(fake), pacer=WindowPacer(),
                                   rng=random.Random(1), max_attempts=1,
                                   sleep=lambda _s: asyncio.sleep(0)) as hl:
            checked = await _check_contact(hl, CID, rows)
            return checked.found, checked.error
    return asyncio.run(go())


@pytest.fixture
def rows() -> list[WriteIntent]:
    return [_row(1, WriteKind.tag), _row(2, WriteKind.note),
            _row(3, WriteKind.tag, code=EventCode.InTransit), _row(4, WriteKind.note)]


def test_a_removed_tag_and_a_removed_note_are_drift(rows: list[WriteIntent]) -> None:
    # HighLevel stores tags lower-cased: the Mailed tag is still there, InTransit is not.
    fake = FakeContact([tag_for(EventCode.Mailed).lower()], [f"note\nref {rows[1].marker}"])
    found, error = check(fake, rows)
    assert error is None
    assert [(f.ledger_id, f.detail) for f in found] == [(3, DRIFT_DETAIL), (4, DRIFT_DETAIL)]


def test_a_tag_being_retriggered_is_not_drift(rows: list[WriteIntent]) -> None:
    # The InTransit tag's untag/tag pair is half-way: absent on purpose, not removed by a user.
    retrigger = _row(5, WriteKind.untag, WriteStatus.pending, EventCode.InTransit)
    fake = FakeContact([tag_for(EventCode.Mailed)], [rows[1].marker or "", rows[3].marker or ""])
    assert check(fake, [*rows, retrigger]) == ([], None)


def test_a_contact_gone_makes_every_done_write_drift_without_reading_notes(
        rows: list[WriteIntent]) -> None:
    fake = FakeContact([], [])
    fake.gone = True
    found, error = check(fake, rows)
    assert error is None and {f.detail for f in found} == {GONE}
    assert sorted(f.ledger_id for f in found) == [1, 2, 3, 4]
    assert fake.paths == [f"/contacts/{CID}"]


def test_unreadable_notes_keep_the_tag_findings_and_say_so(rows: list[WriteIntent]) -> None:
    fake = FakeContact([tag_for(EventCode.Mailed)], [])
    fake.down.add(f"/contacts/{CID}/notes")
    found, error = check(fake, rows)
    assert [f.ledger_id for f in found] == [3]
    # HighLevel's reason; verify tells it once per location, with the contacts it cost.
    assert error is not None and "503" in error


def test_an_unreadable_contact_is_an_error_not_drift(rows: list[WriteIntent]) -> None:
    fake = FakeContact([], [])
    fake.down.add(f"/contacts/{CID}")
    found, error = check(fake, rows)
    assert found == [] and error is not None and "503" in error
    assert fake.paths == [f"/contacts/{CID}"]  # no point listing notes of an unread contact


def test_only_notes_done_reads_only_the_notes() -> None:
    fake = FakeContact([], ["nothing of ours"])
    found, error = check(fake, [_row(2, WriteKind.note)])
    assert error is None and [f.ledger_id for f in found] == [2]
    assert fake.paths == [f"/contacts/{CID}/notes"]


def test_a_run_whose_token_was_refused_explains_its_pending_rows(db_url: str) -> None:
    # The runner stores its errors typed (RunError); the report reads their kind and status.
    engine = make_store(db_url)
    summary = RunSummary(run_id="run-2", kind="sync", errors=[RunError(
        Scope.location, LOC_A, ErrorKind.credentials,
        f"HighLevel refused the token for location {LOC_A}: HTTP 401 Unauthorized: "
        "Invalid token", 401)])
    with Session(engine) as s:
        s.add(SyncRun(id="run-2", kind="sync", started_at=NOW - timedelta(minutes=30),
                      finished_at=NOW - timedelta(minutes=20), status="failed",
                      counts=summary.to_json()))
        s.commit()
    report = build_report(engine, now=NOW)
    found = problems_by_label(report)
    assert found["never"] == found["overdue"] == "token"
    assert "fresh" not in found  # planned after that run: the next run sends it
    token = next(r for r in report.problem_records() if r["problem"] == "token"
                 and r["status"] == "pending")
    assert token["reason"].startswith("HighLevel refused the location's token (HTTP 401): ")
    assert token["reason"].endswith("Invalid token")
