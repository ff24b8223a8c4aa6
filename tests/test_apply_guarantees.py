"""The apply's guarantees, each broken on purpose by one fault a HighLevel stand-in injects.

A small HighLevel over `httpx.MockTransport` (tags, notes, contact lookup) and a real store:
every test fails if the guarantee it names is broken in `sync/apply.py` or `store/ledger.py`.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session

from mailsync.codes import WriteClass
from mailsync.config import CampaignConfig, ConfigError, load_settings
from mailsync.store.engine import get_engine
from mailsync.store.leases import acquire_lease
from mailsync.store.models import ContactLink, LocationLease, MailEvent, WriteIntent, WriteStatus
from mailsync.store.ops import insert_ignore
from mailsync.store.reasons import Reason
from mailsync.sync.apply import Stop
from mailsync.sync.notes import marker_for
from mailsync.sync.plan import plan_writes
from mailsync.sync.settle import SettleResult, settle_location
from tests.fake_highlevel import (
    CAMPAIGN,
    LOC,
    T0,
    FakeHighLevel,
    apply,
    client,
    plan,
    rows,
)


@pytest.fixture
def engine(sqlite_url: str) -> Any:
    return get_engine(sqlite_url)


# -- a store that has not written to a contact reads its notes first ------------------------


def test_first_note_to_a_contact_reads_its_notes_and_never_resends_one_already_there(engine):
    fake = FakeHighLevel()
    fake.add("c1", "ada@example.com")
    plan(engine, 3, contact="c1")
    # Another store (deleted since, or a second deployment) already wrote the first note.
    there = f"Postalytics: Mailed\nmailsync ref {marker_for('e:500:0')}"
    fake.contacts["c1"]["notes"].append({"id": "old", "body": there})
    first = apply(engine, fake)
    assert first.settle_reads == 1
    assert fake.calls("GET", "/contacts/c1/notes") == 1
    assert fake.calls("POST", "/contacts/c1/notes") == 2  # only the two not there yet
    assert len(fake.contacts["c1"]["notes"]) == 3
    assert all(r.status == WriteStatus.done for r in rows(engine))
    # From now on this store knows the contact: a new note goes out without a read.
    plan(engine, 4, contact="c1")
    second = apply(engine, fake)
    assert second.settle_reads == 0 and fake.calls("GET", "/contacts/c1/notes") == 1
    assert len(fake.contacts["c1"]["notes"]) == 4


def test_a_contact_whose_notes_cannot_be_read_gets_no_note_before_its_first_read(engine):
    fake = FakeHighLevel()
    fake.add("c1", "ada@example.com")
    plan(engine, 2, contact="c1")

    async def notes_down(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/notes"):
            return httpx.Response(503, json={"message": "down"})
        return None

    fake.hooks.append(notes_down)
    apply(engine, fake)
    assert fake.calls("POST", "/contacts/c1/notes") == 0
    assert {r.status for r in rows(engine, "note")} == {WriteStatus.pending}
    assert {r.status for r in rows(engine, "tag")} == {WriteStatus.done}  # tags are idempotent
    fake.hooks.clear()
    apply(engine, fake)
    assert len(fake.contacts["c1"]["notes"]) == 2


def test_unknown_notes_are_not_sent_again_when_the_contacts_notes_cannot_be_read(engine):
    fake = FakeHighLevel()
    fake.add("c1", "ada@example.com")
    plan(engine, 2, contact="c1")

    async def cut_after_post(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and request.url.path.endswith("/notes"):
            fake.route(request)  # HighLevel wrote it; the answer never arrives
            raise httpx.ReadError("connection reset", request=request)
        return None

    fake.hooks.append(cut_after_post)
    apply(engine, fake)
    assert {r.status for r in rows(engine, "note")} == {WriteStatus.unknown}
    posted = fake.calls("POST", "/contacts/c1/notes")

    async def notes_down(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/notes"):
            return httpx.Response(500, json={"message": "oops"})
        return None

    fake.hooks[:] = [notes_down]
    apply(engine, fake)
    assert fake.calls("POST", "/contacts/c1/notes") == posted  # nothing re-sent blindly
    fake.hooks.clear()
    apply(engine, fake)  # readable again: settled by marker, not re-sent
    assert fake.calls("POST", "/contacts/c1/notes") == posted
    assert all(r.status == WriteStatus.done for r in rows(engine))
    assert len(fake.contacts["c1"]["notes"]) == 2


def test_every_note_is_unknown_in_the_store_while_its_post_is_on_the_wire(engine):
    fake = FakeHighLevel()
    fake.add("c1", "ada@example.com")
    plan(engine, 3, contact="c1")
    seen: list[str] = []

    async def look_at_the_store(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and request.url.path.endswith("/notes"):
            body = json.loads(request.content)["body"]
            note = next(r for r in rows(engine, "note") if r.marker and r.marker in body)
            seen.append(note.status)
        return None

    fake.hooks.append(look_at_the_store)
    apply(engine, fake)
    assert seen == [WriteStatus.unknown] * 3


# -- a contact HighLevel no longer knows ------------------------------------------------------


@pytest.mark.parametrize("status", [404, 400, 422])
def test_a_gone_contact_drops_the_link_and_the_next_run_writes_to_the_contact_there_now(
        engine, status: int):
    fake = FakeHighLevel()
    fake.add("old", "ada@example.com")
    plan(engine, 1)
    apply(engine, fake)
    with Session(engine) as s:
        assert s.get(ContactLink, (LOC, "d:1")).contact_id == "old"  # type: ignore[union-attr]
    # Support deletes the contact and creates it again; HighLevel says so with `status`.
    del fake.contacts["old"]
    fake.add("new", "ada@example.com")
    message: Any = "Contact not found" if status != 422 else ["Contact not found"]

    async def gone(request: httpx.Request) -> httpx.Response | None:
        if "/contacts/old" in request.url.path:
            return httpx.Response(status, json={"statusCode": status, "message": message})
        return None

    fake.hooks.append(gone)
    fake.requests.clear()
    plan(engine, 3)
    apply(engine, fake)
    open_rows = [r for r in rows(engine) if r.status != WriteStatus.done]
    assert open_rows and all(r.reason_code == Reason.contact_gone and r.contact_id is None
                             and r.status == WriteStatus.pending for r in open_rows)
    assert fake.calls("POST", "/contacts/old/notes") == 0  # no note sent to a dead contact
    apply(engine, fake)
    assert all(r.status == WriteStatus.done for r in rows(engine))
    assert {r.contact_id for r in rows(engine) if r.event_key != "e:500:0"} == {"new"}
    assert len(fake.contacts["new"]["notes"]) == 2


def test_a_lagging_search_that_still_finds_a_gone_contact_is_not_believed(engine):
    fake = FakeHighLevel()
    fake.add("old", "ada@example.com")
    plan(engine, 1)
    apply(engine, fake)

    async def gone(request: httpx.Request) -> httpx.Response | None:
        # Deleted: every call on it says so, but the search index still returns it.
        if "/contacts/old" in request.url.path:
            return httpx.Response(404, json={"statusCode": 404, "message": "Contact not found"})
        return None

    fake.hooks.append(gone)
    plan(engine, 3)
    apply(engine, fake)  # learns the contact is gone
    tried = fake.calls("GET|POST|DELETE", "/contacts/old/.*")
    apply(engine, fake)  # looks the recipient up again: the search answers "old"
    assert fake.calls("GET", "/contacts/search/duplicate") >= 1
    assert fake.calls("GET|POST|DELETE", "/contacts/old/.*") == tried  # never written again
    assert all(r.contact_id != "old" for r in rows(engine) if r.status != WriteStatus.done)


def test_a_carried_contact_id_that_is_gone_is_not_used_again(engine):
    fake = FakeHighLevel()
    fake.add("new", "ada@example.com")
    plan(engine, 1, contact="gone-id")  # the list still carries a deleted contact's id
    apply(engine, fake)
    assert rows(engine)[0].reason_code == Reason.contact_gone
    apply(engine, fake)
    assert all(r.status == WriteStatus.done and r.contact_id == "new" for r in rows(engine))
    plan(engine, 2, contact="gone-id")  # a later event still carries the dead id
    apply(engine, fake)
    assert all(r.status == WriteStatus.done and r.contact_id == "new" for r in rows(engine))
    assert fake.calls("GET|POST", "/contacts/gone-id/.*") == 1  # asked once, never again


# -- HighLevel down ---------------------------------------------------------------------------


def _many_contacts(engine: Any, fake: FakeHighLevel, contacts: int) -> None:
    """Two events (a tag and a note each) for each of `contacts` recipients with a contact."""
    evs = []
    for n in range(contacts):
        fake.add(f"c{n}", f"p{n}@example.com")
        evs += [MailEvent(key=f"e:500:{n}:{i}", drop_id="500", recipient_key=f"d:{n}",
                          code=("Mailed", "InTransit")[i], event_at=T0 + timedelta(hours=i),
                          email=f"p{n}@example.com", carried_contact_id=f"c{n}")
                for i in range(2)]
    with Session(engine) as s:
        insert_ignore(s, evs)
        insert_ignore(s, plan_writes(evs, CAMPAIGN))
        s.commit()


def test_an_unreachable_highlevel_stops_the_location_at_once_and_loses_nothing(engine):
    fake = FakeHighLevel()
    _many_contacts(engine, fake, 20)

    async def down(request: httpx.Request) -> httpx.Response | None:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    fake.hooks.append(down)
    result = apply(engine, fake)
    assert result.stopped == Stop.unreachable
    # Only the calls already in flight when the first one failed (8 side by side, 2 tries
    # each), not 20 contacts' worth of retries and timeouts.
    assert len(fake.requests) <= 16, len(fake.requests)
    waiting = rows(engine)
    tried = {r.contact_id for r in waiting if r.status == WriteStatus.failed}  # tried again
    assert len(tried) <= 8 and {r.status for r in waiting} <= {WriteStatus.pending,
                                                                WriteStatus.failed}
    assert {r.reason_code for r in waiting} == {Reason.unanswered}
    fake.hooks.clear()
    assert apply(engine, fake).stopped is None
    assert {r.status for r in rows(engine)} == {WriteStatus.done}
    assert all(len(c["notes"]) == 2 for c in fake.contacts.values())  # each note once


# -- leases ---------------------------------------------------------------------------------


def test_an_apply_refused_the_lease_sends_nothing(engine):
    fake = FakeHighLevel()
    fake.add("c1", "ada@example.com")
    plan(engine, 2, contact="c1")
    assert acquire_lease(engine, LOC, "another-host:123:abcd", timedelta(minutes=5))
    result = apply(engine, fake, holder="this-host:1:ef01")
    assert result.stopped == Stop.lease_held_elsewhere
    assert fake.requests == []
    assert {r.status for r in rows(engine)} == {WriteStatus.pending}


def _lease_stolen_at(engine: Any, path_end: str) -> Any:
    """A hook: at a POST to a path ending so, another worker takes the location over,
    and the call lasts long enough for several renewals of a 0.3 s lease to fail."""
    async def stolen(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and request.url.path.endswith(path_end):
            with Session(engine) as s:
                s.execute(update(LocationLease).values(
                    holder="another-host:9:beef",
                    expires_at=datetime.now(UTC) + timedelta(minutes=5)))
                s.commit()
            await asyncio.sleep(0.5)
        return None
    return stolen


def test_a_lost_lease_stops_the_writes_that_have_not_started(engine):
    fake = FakeHighLevel()
    fake.add("c1", "ada@example.com")
    plan(engine, 6, contact="c1")

    fake.hooks.append(_lease_stolen_at(engine, "/notes"))
    result = apply(engine, fake, holder="this-host:1:ef01", lease_ttl=timedelta(seconds=0.3))
    assert result.stopped == Stop.lease_lost
    assert fake.calls("POST", "/contacts/c1/notes") == 1


def test_a_lost_lease_leaves_the_tag_rows_it_did_not_send_as_they_were(engine):
    """A tag row gets its contact with its outcome, at the chunk's end: once the lease is lost,
    another worker may be writing the rows this one never sent, so those are not touched."""
    fake = FakeHighLevel()
    _many_contacts(engine, fake, 2)
    before = {r.id: (r.contact_id, r.status, r.updated_at) for r in rows(engine, "tag")}

    fake.hooks.append(_lease_stolen_at(engine, "/tags"))
    result = apply(engine, fake, holder="this-host:1:ef01", lease_ttl=timedelta(seconds=0.3),
                   concurrency=1)
    assert result.stopped == Stop.lease_lost
    assert fake.calls("POST", "/contacts/.*/tags") == 1
    after = {r.id: (r.contact_id, r.status, r.updated_at) for r in rows(engine, "tag")}
    sent = [i for i in after if after[i][1] == WriteStatus.done]
    assert len(sent) == 2 and all(after[i][0] is not None for i in sent)
    assert {i: after[i] for i in after if i not in sent} == {
        i: before[i] for i in before if i not in sent}


def test_settle_marks_the_notes_already_there_and_forgets_what_the_store_had_read(engine):
    fake = FakeHighLevel()
    fake.add("c1", "ada@example.com")
    plan(engine, 1, contact="c1")
    apply(engine, fake)  # c1 is now a contact this store has read
    plan(engine, 3, contact="c1")
    with Session(engine) as s:  # resolved, not yet sent, when the backup was taken
        s.execute(update(WriteIntent).where(WriteIntent.contact_id.is_(None))  # type: ignore[union-attr]
                  .values(contact_id="c1"))
        s.commit()
    # Sent by this store after a backup was taken, which the operator has restored since.
    there = f"Postalytics: In Transit\nmailsync ref {marker_for('e:500:1')}"
    fake.contacts["c1"]["notes"].append({"id": "n-after-backup", "body": there})

    async def go() -> SettleResult:
        async with client(fake) as hl:
            return await settle_location(engine, hl, LOC)

    result = asyncio.run(go())
    assert (result.contacts_read, result.notes_found) == (1, 1)
    note1 = next(r for r in rows(engine, "note") if r.event_key == "e:500:1")
    assert note1.status == WriteStatus.done and note1.remote_id == "n-after-backup"
    apply(engine, fake)
    assert len(fake.contacts["c1"]["notes"]) == 3  # the one left was sent, nothing twice


# -- a short daily budget spends itself on what matters most first ---------------------------


def _visits_and_scans(engine: Any) -> None:
    camp = CampaignConfig(drop_id="500", location=LOC, events=["Mailed", "pURLOpened"])
    evs = [MailEvent(key=f"e:500:{who}-{code}", drop_id="500", recipient_key=f"d:{who}",
                     code=code, event_at=T0, carried_contact_id=f"c{who}")
           for who in (1, 2) for code in ("pURLOpened", "Mailed")]
    with Session(engine) as s:
        insert_ignore(s, evs)
        insert_ignore(s, plan_writes(evs, camp))
        s.commit()


def _order(fake: FakeHighLevel) -> list[str]:
    out = []
    for method, path in fake.requests:
        if method == "POST" and path.endswith("/tags"):
            out.append("tag")
        elif method == "POST" and path.endswith("/notes"):
            out.append("note")
    return out


def test_tags_go_first_and_visit_notes_last_unless_configured_otherwise(engine):
    fake = FakeHighLevel()
    fake.add("c1", "a@example.com")
    fake.add("c2", "b@example.com")
    _visits_and_scans(engine)
    apply(engine, fake)
    assert _order(fake) == ["tag", "tag", "note", "note", "note", "note"]
    notes = [json.loads(r.content)["body"].split("\n")[0] for r in _posted_notes(fake)]
    assert notes == ["Postalytics: Mailed"] * 2 + ["Postalytics: pURL Opened"] * 2

    other = FakeHighLevel()
    other.add("c1", "a@example.com")
    other.add("c2", "b@example.com")
    with Session(engine) as s:
        s.execute(update(WriteIntent).values(status=WriteStatus.pending))
        s.commit()
    apply(engine, other, write_order=(WriteClass.response_notes, WriteClass.tags,
                                      WriteClass.journey_notes))
    assert _order(other)[:2] == ["note", "note"]
    first = [json.loads(r.content)["body"].split("\n")[0] for r in _posted_notes(other)][:2]
    assert first == ["Postalytics: pURL Opened"] * 2


def _posted_notes(fake: FakeHighLevel) -> list[httpx.Request]:
    return [r for r in fake.bodies if r.method == "POST" and r.url.path.endswith("/notes")]


def test_write_order_must_name_each_class_once(tmp_path):
    conf = tmp_path / "m.toml"
    conf.write_text('[highlevel]\nwrite_order = ["tags", "tags", "journey_notes"]\n')
    with pytest.raises(ConfigError, match=r"highlevel\.write_order: must name each of tags, "
                                          "journey_notes, response_notes once"):
        load_settings(conf, environ={})
    conf.write_text('[highlevel]\nwrite_order = ["response_notes", "journey_notes", "tags"]\n')
    assert load_settings(conf, environ={}).highlevel.write_order[0] == WriteClass.response_notes
