"""The apply's ledger writes go per chunk of recipients, not per row or per contact, and
batching them keeps every guarantee: a note is never sent twice, whatever is lost.

The same HighLevel stand-in as tests/test_apply_guarantees.py, with many recipients.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import Session

from mailsync.store import ledger
from mailsync.store.engine import get_engine
from mailsync.store.models import MailEvent, WriteStatus
from mailsync.store.ops import insert_ignore
from mailsync.sync.apply import ApplyOptions, ApplyResult, apply_location
from mailsync.sync.plan import plan_writes
from tests.fake_highlevel import CAMPAIGN, LOC, T0, FakeHighLevel, client, rows


@pytest.fixture
def engine(sqlite_url: str) -> Any:
    return get_engine(sqlite_url)


def plan_many(engine: Any, fake: FakeHighLevel, recipients: int, events: int) -> None:
    """`recipients` recipients (half carry their contact id, half are found by email), each
    with `events` events, and the ledger rows they cause."""
    evs = []
    for who in range(recipients):
        fake.add(f"c{who}", f"r{who}@example.com")
        carried = f"c{who}" if who % 2 else None
        evs += [MailEvent(key=f"e:500:{who}:{i}", drop_id="500", recipient_key=f"d:{who}",
                          code="Mailed" if i == 0 else "InTransit",
                          event_at=T0 + timedelta(hours=i), email=f"r{who}@example.com",
                          carried_contact_id=carried) for i in range(events)]
    with Session(engine) as s:
        insert_ignore(s, evs)
        insert_ignore(s, plan_writes(evs, CAMPAIGN))
        s.commit()


def apply(engine: Any, fake: FakeHighLevel, **opts: Any) -> ApplyResult:
    async def go() -> ApplyResult:
        async with client(fake) as hl:
            return await apply_location(engine, hl, LOC, ApplyOptions(**opts))
    return asyncio.run(go())


def count_statements(engine: Any) -> Counter[str]:
    """Statements the engine runs from now on, by their first word (COMMIT included)."""
    seen: Counter[str] = Counter()

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        seen[statement.split()[0].upper()] += 1

    @event.listens_for(engine, "commit")
    def _commit(conn):  # type: ignore[no-untyped-def]
        seen["COMMIT"] += 1

    return seen


@pytest.mark.parametrize("recipients", [4, 12])  # under one pacer window of calls
def test_statements_and_commits_grow_with_chunks_not_with_rows(engine, recipients: int):
    fake = FakeHighLevel()
    plan_many(engine, fake, recipients, events=4)
    seen = count_statements(engine)
    result = apply(engine, fake, chunk_recipients=50)
    writes = fake.calls("POST", r"/contacts/.*/(notes|tags)")
    # Per recipient: one tags call for its two tag rows, then its four notes.
    assert writes == recipients * 5 and result.outcomes == {"done": recipients * 6}
    # One chunk and two passes (tags, then notes), whatever the number of rows: the reads of
    # each chunk, its two commits, the lease-free bookkeeping; lookups check a found contact
    # against the gone ones (one query per lookup, half of the recipients here).
    lookups = fake.calls("GET", "/contacts/search/duplicate")
    assert lookups == recipients // 2
    # The tags pass's chunk has no note to mark as being sent first: one commit, not two.
    assert seen["COMMIT"] == 1 + 2
    assert sum(seen.values()) <= 2 * 16 + lookups, seen


def test_a_recipient_is_resolved_once_per_apply_not_once_per_pass(engine):
    fake = FakeHighLevel()
    plan_many(engine, fake, 6, events=3)
    reads: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            reads.append(statement)

    result = apply(engine, fake, chunk_recipients=50)
    assert result.outcomes == {"done": 6 * 5}
    # The tags pass reads who the recipients are and their links; the notes pass knows.
    assert sum("FROM mail_events" in q for q in reads) == 1
    assert sum("FROM contact_links" in q for q in reads) == 1
    assert fake.calls("GET", "/contacts/search/duplicate") == 3  # those without a carried id


class Killed(Exception):
    """The process dying, short of killing pytest."""


def test_a_chunk_whose_outcomes_are_lost_costs_one_read_per_contact_and_no_note_twice(
        engine, monkeypatch: pytest.MonkeyPatch):
    fake = FakeHighLevel()
    plan_many(engine, fake, 6, events=3)
    apply(engine, fake, write_order=("tags",))  # every contact tagged and read before
    real_write = ledger.write
    writes = 0

    def lose_the_chunks_end(engine: Any, batch: ledger.Batch) -> Any:
        # The process dies after the chunk's first commit (notes marked `unknown`) and its
        # POSTs, before its last commit: what a SIGKILL does, without killing pytest.
        nonlocal writes
        writes += 1
        if writes == 2:
            raise Killed
        return real_write(engine, batch)

    monkeypatch.setattr(ledger, "write", lose_the_chunks_end)
    with pytest.raises(Killed):
        apply(engine, fake)
    monkeypatch.setattr(ledger, "write", real_write)
    notes = rows(engine, "note")
    assert {n.status for n in notes} == {WriteStatus.unknown}
    posted = fake.calls("POST", "/contacts/.*/notes")
    assert posted == len(notes) == 18
    reads_before = fake.calls("GET", "/contacts/.*/notes")
    again = apply(engine, fake)
    # Each contact's notes read once, every note found by its marker, none sent again.
    # (Their first reads were lost with the chunk's end, so these count as first reads.)
    assert fake.calls("GET", "/contacts/.*/notes") - reads_before == 6
    assert again.settle_reads == 6
    assert fake.calls("POST", "/contacts/.*/notes") == posted
    assert all(n.status == WriteStatus.done for n in rows(engine, "note"))
    assert all(len(c["notes"]) == 3 for c in fake.contacts.values())


def test_contacts_and_lookups_go_side_by_side_never_more_than_the_concurrency(engine):
    fake = FakeHighLevel()
    plan_many(engine, fake, recipients=12, events=2)
    flying = {"now": 0, "most": 0, "lookups_most": 0}

    async def slow(request: Any) -> None:
        flying["now"] += 1
        flying["most"] = max(flying["most"], flying["now"])
        if "search" in request.url.path:
            flying["lookups_most"] = max(flying["lookups_most"], flying["now"])
        await asyncio.sleep(0.01)
        flying["now"] -= 1

    fake.hooks.append(slow)
    result = apply(engine, fake, concurrency=3)
    assert result.outcomes == {"done": 12 * 4}  # two tag rows and two notes each
    # Six recipients are looked up by email, then twelve contacts written: three at a time.
    assert flying["lookups_most"] == 3 and flying["most"] == 3


def test_a_notes_chunks_outcomes_go_with_the_next_chunks_first_commit(engine):
    fake = FakeHighLevel()
    plan_many(engine, fake, 12, events=3)
    apply(engine, fake, write_order=("tags",))
    seen = count_statements(engine)
    result = apply(engine, fake, chunk_recipients=4, write_order=("journey_notes",))
    assert result.outcomes == {"done": 12 * 3}
    # Three chunks: each one's first commit (its notes marked, the last one's outcomes),
    # then the pass's last outcomes. Two commits a chunk before.
    assert seen["COMMIT"] == 3 + 1
    assert all(n.status == WriteStatus.done for n in rows(engine, "note"))


def test_a_crash_before_the_next_chunk_stores_the_outcomes_sends_no_note_twice(
        engine, monkeypatch: pytest.MonkeyPatch):
    fake = FakeHighLevel()
    plan_many(engine, fake, 12, events=3)
    apply(engine, fake, write_order=("tags",))
    real_write = ledger.write
    writes = 0

    def die_at_the_second_chunks_start(engine: Any, batch: ledger.Batch) -> Any:
        nonlocal writes
        writes += 1
        if writes == 2:  # the first chunk's notes are posted; its outcomes go with this
            raise Killed
        return real_write(engine, batch)

    monkeypatch.setattr(ledger, "write", die_at_the_second_chunks_start)
    with pytest.raises(Killed):
        apply(engine, fake, chunk_recipients=4)
    monkeypatch.setattr(ledger, "write", real_write)
    assert fake.calls("POST", "/contacts/.*/notes") == 4 * 3
    reads_before = fake.calls("GET", "/contacts/.*/notes")
    again = apply(engine, fake, chunk_recipients=4)
    # Every contact's notes are read before its first note, as always: the first chunk's
    # four a second time (their reads were lost with the outcomes), their notes found there.
    assert reads_before == 4
    assert fake.calls("GET", "/contacts/.*/notes") - reads_before == 12
    assert again.outcomes == {"done": 12 * 3}
    assert fake.calls("POST", "/contacts/.*/notes") == 12 * 3
    assert all(len(c["notes"]) == 3 for c in fake.contacts.values())


def test_a_contact_read_in_one_chunk_is_not_read_again_in_the_next(engine):
    fake = FakeHighLevel()
    fake.add("c0", "ada@example.com")
    # Two recipients with one contact (found by the same email), in consecutive chunks.
    evs = [MailEvent(key=f"e:500:{who}:{i}", drop_id="500", recipient_key=who,
                     code="Mailed" if i == 0 else "InTransit",
                     event_at=T0 + timedelta(hours=i), email="ada@example.com")
           for who in ("d:1", "d:2") for i in range(2)]
    with Session(engine) as s:
        insert_ignore(s, evs)
        insert_ignore(s, plan_writes(evs, CAMPAIGN))
        s.commit()
    result = apply(engine, fake, chunk_recipients=1)
    assert result.outcomes == {"done": 2 * 4}
    # Read before its first note; the second chunk knows, though the first chunk's record
    # of it waits for the second chunk's first commit.
    assert fake.calls("GET", "/contacts/c0/notes") == 1 == result.settle_reads
    assert len(fake.contacts["c0"]["notes"]) == 4
