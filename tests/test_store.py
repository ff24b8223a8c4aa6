"""The store on SQLite and PostgreSQL: migrations, and insert-if-new under races."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import Session, SQLModel, func, select
from typer.testing import CliRunner

from mailsync.cli.main import app
from mailsync.store import ledger
from mailsync.store.engine import get_engine, head_revision, upgrade_database
from mailsync.store.models import MailEvent, WriteIntent, WriteKind, WriteStatus, detached
from mailsync.store.ops import execute_many, insert_ignore, rows_where_in
from mailsync.store.reasons import Reason

TABLES = {"campaigns", "mail_events", "quarantined_events", "contact_links", "write_ledger",
          "sync_runs", "location_leases", "oauth_tokens", "store_meta", "settled_contacts",
          "gone_contacts",
          "alembic_version"}


def event(key: str = "e1") -> MailEvent:
    return MailEvent(key=key, drop_id="100", recipient_key="r1", code="Mailed",
                     event_at=datetime(2026, 11, 20, 14, 3, tzinfo=UTC))


def tag_intent() -> WriteIntent:
    return WriteIntent(intent_key="tag|100|r1|Mailed", kind="tag", location_id="loc1",
                       drop_id="100", recipient_key="r1", code="Mailed",
                       tag="Postalytics Event: Mailed")


def test_upgrade_creates_every_table_and_again_is_a_no_op(db_url: str):
    assert upgrade_database(db_url) == (None, head_revision())
    engine = get_engine(db_url)
    assert TABLES <= set(sa.inspect(engine).get_table_names())
    assert upgrade_database(db_url) == (head_revision(), head_revision())


def test_migrated_schema_matches_the_models(db_url: str):
    engine = get_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def _store_at(db_url: str, revision: str, rows: list[SQLModel]) -> None:
    """A store migrated only up to `revision`, holding `rows`."""
    from alembic import command

    from mailsync.store.engine import _alembic_config, _engine, normalise_url

    url = normalise_url(db_url)
    cfg = _alembic_config(url)
    with _engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    with Session(_engine(url)) as s:
        insert_ignore(s, rows)
        s.commit()


def test_a_store_from_before_0005_keeps_its_ledger_and_indexes_it_by_campaign(db_url: str):
    _store_at(db_url, "0004", [tag_intent()])
    engine = get_engine(db_url)  # upgrades to head
    indexes = {i["name"]: i["column_names"] for i in sa.inspect(engine).get_indexes("write_ledger")}
    # Storing an outcome changes the status: one index holds it, not two.
    assert [n for n, cols in indexes.items() if "status" in cols] == [
        "ix_write_ledger_location_status"]
    assert indexes["ix_write_ledger_drop_id"] == ["drop_id"]
    with Session(engine) as s:
        [row] = s.exec(select(WriteIntent)).all()
    assert (row.intent_key, row.drop_id, row.status) == ("tag|100|r1|Mailed", "100", "pending")


def test_a_store_from_before_0006_keeps_its_events_and_indexes_only_webhook_values(
        db_url: str):
    polled = event("e:100:1")
    webhook = detached(MailEvent, **{**event("w:m1").model_dump(), "poll_key": "e:100:2",
                                     "piece_id": "p1", "source": "webhook"})
    _store_at(db_url, "0005", [polled, webhook])
    engine = get_engine(db_url)  # upgrades to head
    partial = {i["name"]: str(i["dialect_options"].get(f"{engine.dialect.name}_where"))
               for i in sa.inspect(engine).get_indexes("mail_events")}
    # A polled event has neither column: it is not written to these indexes at all.
    assert "poll_key IS NOT NULL" in partial["uq_mail_events_poll_key"]
    assert "piece_id IS NOT NULL" in partial["ix_mail_events_drop_piece"]
    later = [detached(MailEvent, **{**event(k).model_dump(), "poll_key": pk})
             for k, pk in (("e:100:3", None), ("w:m2", "e:100:2"))]
    with Session(engine) as s:
        # Still unique where there is a value; rows without one never collide.
        assert insert_ignore(s, later) == ["e:100:3"]
        s.commit()
        rows = s.exec(select(MailEvent.key, MailEvent.poll_key, MailEvent.piece_id)
                      .order_by(MailEvent.key)).all()
    assert rows == [("e:100:1", None, None), ("e:100:3", None, None),
                    ("w:m1", "e:100:2", "p1")]


def test_sqlite_connections_reuse_the_last_one_with_its_cache(tmp_path):
    engine = get_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    with engine.connect() as first:
        first_dbapi = first.connection.driver_connection
        with engine.connect() as other:  # a second connection, used meanwhile
            other.exec_driver_sql("SELECT 1")
        pragmas = {p: first.exec_driver_sql(f"PRAGMA {p}").scalar()
                   for p in ("journal_mode", "synchronous", "cache_size", "wal_autocheckpoint")}
    assert pragmas == {"journal_mode": "wal", "synchronous": 1, "cache_size": -8192,
                       "wal_autocheckpoint": 4000}
    # The pool hands out the connection returned last, whose page cache is still valid.
    with engine.connect() as again:
        assert again.connection.driver_connection is first_dbapi


def test_cli_db_upgrade_on_empty_then_again(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("MAILSYNC_DATABASE_URL", url)
    monkeypatch.delenv("MAILSYNC_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    first = runner.invoke(app, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "upgraded from empty" in first.output
    second = runner.invoke(app, ["db", "upgrade"])
    assert "nothing to do" in second.output


def test_same_event_and_same_intent_twice_leave_one_row(db_url: str):
    engine = get_engine(db_url)
    with Session(engine) as s:
        assert insert_ignore(s, [event(), event()]) == ["e1"]
        assert insert_ignore(s, [event()]) == []
        assert len(insert_ignore(s, [tag_intent()])) == 1
        assert insert_ignore(s, [tag_intent()]) == []
        s.commit()
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(MailEvent)).one() == 1
        assert s.exec(select(func.count()).select_from(WriteIntent)).one() == 1
        stored = s.exec(select(MailEvent)).one()
        assert stored.event_at == datetime(2026, 11, 20, 14, 3, tzinfo=UTC)


def test_many_rows_go_in_several_statements_and_only_new_ones_come_back(db_url: str):
    engine = get_engine(db_url)
    with Session(engine) as s:
        insert_ignore(s, [event(f"e{i}") for i in range(0, 1200, 2)])
        back = insert_ignore(s, [event(f"e{i}") for i in range(1200)])  # > 1 statement's rows
        s.commit()
    assert sorted(back) == sorted(f"e{i}" for i in range(1, 1200, 2))
    with Session(engine) as s:
        stored = s.exec(select(MailEvent).where(MailEvent.key == "e1199")).one()
        assert stored.event_at == datetime(2026, 11, 20, 14, 3, tzinfo=UTC)
        assert s.exec(select(func.count()).select_from(MailEvent)).one() == 1200


def test_timestamps_written_as_driver_sql_compare_equal_to_sqlalchemy_s(db_url: str):
    # SQLite keeps timestamps as text: a row written with another text form than the one
    # SQLAlchemy binds (sqlite3's own adapter writes "+00:00" and drops ".000000") is not
    # found by its own time, and sorts before it. Each row's own time must be written, not
    # another row's (values are bound once per distinct value in a batch).
    from datetime import timedelta

    engine = get_engine(db_url)
    at = datetime(2026, 11, 20, 14, 3, tzinfo=UTC)
    now = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
    writes = WriteIntent.__table__
    done = sa.update(writes).where(writes.c.id == sa.bindparam("row_id")).values(
        status="done", remote_id=sa.bindparam("v_remote"),
        updated_at=sa.bindparam("now", type_=writes.c.updated_at.type))
    with Session(engine) as s:
        later = detached(MailEvent, key="e3", drop_id="100", recipient_key="r1",
                         code="Mailed", event_at=at + timedelta(hours=1))
        insert_ignore(s, [event("e1"), later, event("e2")])
        ids = sorted(insert_ignore(s, [tag_intent(), detached(
            WriteIntent, intent_key="note|e1", kind="note", location_id="loc1", drop_id="100",
            recipient_key="r1", code="Mailed")]))
        execute_many(s.connection(), done, [
            {"row_id": i, "v_remote": f"n{i}", "now": now + timedelta(seconds=n)}
            for n, i in enumerate(ids)])
        s.commit()
        assert sorted(e.key for e in s.exec(
            select(MailEvent).where(MailEvent.event_at == at)).all()) == ["e1", "e2"]
        assert [e.key for e in s.exec(
            select(MailEvent).where(MailEvent.event_at == later.event_at)).all()] == ["e3"]
        assert s.exec(select(func.count()).select_from(MailEvent)
                      .where(MailEvent.event_at < at)).one() == 0
        for n, i in enumerate(ids):
            stored = s.exec(select(WriteIntent).where(
                WriteIntent.updated_at == now + timedelta(seconds=n))).all()
            assert [(w.id, w.status, w.remote_id) for w in stored] == [(i, "done", f"n{i}")]


def test_a_value_a_column_cannot_bind_is_a_statement_error_like_sqlalchemy_s(db_url: str):
    # write_isolating quarantines a row on StatementError: a column type refusing a value
    # must surface as one, not as the type's own exception.
    engine = get_engine(db_url)
    naive = detached(MailEvent, key="n1", drop_id="100", recipient_key="r1", code="Mailed",
                     event_at=datetime(2026, 11, 20, 14, 3))
    with Session(engine) as s:
        with pytest.raises(sa.exc.StatementError, match="naive datetime"):
            insert_ignore(s, [event("ok"), naive])
        s.rollback()
        assert s.exec(select(func.count()).select_from(MailEvent)).one() == 0


def test_racing_connections_leave_one_row(db_url: str):
    engine = get_engine(db_url)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with Session(engine) as s:
                barrier.wait()
                insert_ignore(s, [event(f"e{i}") for i in range(50)])
                insert_ignore(s, [tag_intent()])
                s.commit()
        except BaseException as exc:  # surfaced below: a thread's error must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(MailEvent)).one() == 50
        assert s.exec(select(func.count()).select_from(WriteIntent)).one() == 1


def test_a_detached_row_is_what_model_construct_builds_and_stores_the_same(db_url: str):
    row = detached(WriteIntent, intent_key="note|e1", kind="note", location_id="loc1",
                   drop_id="100", recipient_key="r1", code="Mailed", body="Mailed today")
    like = WriteIntent.model_construct(**row.model_dump(exclude_unset=True))
    assert row.model_dump() == like.model_dump() | {"created_at": row.created_at,
                                                    "updated_at": row.updated_at}
    assert row.model_fields_set == like.model_fields_set
    assert (row.kind, row.status, row.attempts, row.tag) == ("note", "pending", 0, None)
    done = detached(WriteIntent, intent_key="note|e3", kind="note", location_id="loc1",
                    drop_id="100", recipient_key="r1", code="Mailed", status="done")
    other = detached(WriteIntent, intent_key="note|e2", kind="note", location_id="loc1",
                     drop_id="100", recipient_key="r1", code="Mailed")
    # A row's values never reach the defaults the next row starts from.
    assert (done.status, other.status, other.body) == ("done", "pending", None)
    engine = get_engine(db_url)
    with Session(engine) as s:
        assert len(insert_ignore(s, [row, other])) == 2
        s.commit()
        stored = s.exec(select(WriteIntent).where(WriteIntent.intent_key == "note|e1")).one()
    assert (stored.body, stored.status, stored.location_id) == ("Mailed today", "pending", "loc1")


def test_a_recipient_s_details_are_each_field_s_newest_value(db_url: str):
    from mailsync.sync.resolve import load_recipients

    engine = get_engine(db_url)

    def at(key: str, hour: int, drop: str = "100", **details: str) -> MailEvent:
        return detached(MailEvent, key=key, drop_id=drop, recipient_key="r1", code="Mailed",
                        event_at=datetime(2026, 11, 20, hour, tzinfo=UTC), **details)

    with Session(engine) as s:
        # Stored out of time order: the newest event's blank fields keep older answers.
        insert_ignore(s, [at("e3", 12, email="new@example.com"),
                          at("e1", 10, email="old@example.com", first_name="Ada"),
                          at("e2", 11, phone="+15550100"),
                          at("x1", 13, drop="200", email="other@example.com")])
        s.commit()
    who = load_recipients(engine, {("100", "r1")})
    assert list(who) == [("100", "r1")]
    ada = who[("100", "r1")]
    assert (ada.email, ada.phone, ada.first_name, ada.last_name) == (
        "new@example.com", "+15550100", "Ada", None)


def test_on_sqlite_a_time_is_stored_as_the_text_sqlalchemy_has_always_written():
    # Stores written by earlier versions hold SQLAlchemy's DATETIME text: the faster
    # processor must write the very same text, or equal times would stop comparing equal.
    from datetime import timedelta, timezone

    from sqlalchemy.dialects import sqlite

    from mailsync.store.models import UTCDateTime

    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    theirs = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    plus_five = timezone(timedelta(hours=5, minutes=30))
    for value in (datetime(2026, 11, 20, 14, 3, tzinfo=UTC),
                  datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                  datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
                  datetime(2027, 1, 1, 4, 0, 0, 123, tzinfo=plus_five)):
        assert ours(value) == theirs(value.astimezone(UTC).replace(tzinfo=None))
    assert ours(datetime(2027, 1, 1, 4, tzinfo=plus_five)) == "2026-12-31 22:30:00.000000"
    assert ours(None) is None
    with pytest.raises(ValueError, match="naive"):
        ours(datetime(2026, 11, 20))


def test_rows_are_read_by_key_in_chunks_with_their_column_types(db_url: str):
    engine = get_engine(db_url)
    with Session(engine) as s:
        insert_ignore(s, [event(f"e{i}") for i in range(0, 1200, 2)])
        s.commit()
        asked = [f"e{i}" for i in range(1200)]  # more than one statement's worth
        rows = rows_where_in(s.connection(), MailEvent.__table__,
                             ("key", "event_at", "code"), "key", asked)
    assert sorted(k for k, _, _ in rows) == sorted(f"e{i}" for i in range(0, 1200, 2))
    assert {(at, code) for _, at, code in rows} == {
        (datetime(2026, 11, 20, 14, 3, tzinfo=UTC), "Mailed")}  # aware, as SQLAlchemy reads it
    with Session(engine) as s:
        assert rows_where_in(s.connection(), MailEvent.__table__, ("key",), "key", []) == []


def _ledger_rows(engine: sa.Engine, n: int) -> list[int]:
    rows = [detached(WriteIntent, intent_key=f"note|e{i}", kind="note", location_id="loc1",
                     drop_id="100", recipient_key="r1", event_key=f"e{i}", code="Mailed",
                     body="b", marker=f"ms-{i}") for i in range(n)]
    with Session(engine) as s:
        insert_ignore(s, rows)
        s.commit()
        return list(s.exec(select(WriteIntent.id).order_by(WriteIntent.id)).all())


def test_a_batch_links_rows_and_marks_notes_sending_as_the_two_steps_would(db_url: str):
    """A chunk's first commit points rows at their contact and marks its notes as being
    sent; a row with its own outcome in the batch keeps that outcome."""
    engine = get_engine(db_url)
    linked_sent, linked_only, sent_only, linked_told = _ledger_rows(engine, 4)
    batch = ledger.Batch("loc1", links=[(linked_sent, "c1"), (linked_only, "c1"),
                                        (linked_told, "c2")],
                         sending=[linked_sent, sent_only, linked_told],
                         outcomes=[ledger.RowOutcome(linked_told, WriteStatus.rejected,
                                                     Reason.contact_gone, "gone")])
    ledger.write(engine, batch)
    with Session(engine) as s:
        got = {r.id: (r.contact_id, r.status, r.reason_code)
               for r in s.exec(select(WriteIntent)).all()}
    assert got == {
        linked_sent: ("c1", WriteStatus.unknown, Reason.sending),
        linked_only: ("c1", WriteStatus.pending, None),
        sent_only: (None, WriteStatus.unknown, Reason.sending),
        # What the two steps in turn leave: linked, its outcome, then marked as being sent.
        linked_told: ("c2", WriteStatus.unknown, Reason.sending),
    }


def test_an_outcome_stored_with_its_rows_link_leaves_what_the_two_steps_would(db_url: str):
    """A chunk's last commit stores each tag row's contact with its outcome; an outcome that
    forgets the contact wins over the link, as it would stored after it."""
    engine = get_engine(db_url)
    done, gone, linked_only = _ledger_rows(engine, 3)
    batch = ledger.Batch("loc1", links=[(done, "c1"), (gone, "c2"), (linked_only, "c3")],
                         outcomes=[ledger.RowOutcome(done, WriteStatus.done, http_status=200),
                                   ledger.RowOutcome(gone, WriteStatus.pending,
                                                     Reason.contact_gone, "gone",
                                                     clear_contact=True)])
    ledger.write(engine, batch)
    with Session(engine) as s:
        got = {r.id: (r.contact_id, r.status, r.reason_code, r.attempts, r.last_http_status)
               for r in s.exec(select(WriteIntent)).all()}
    assert got == {done: ("c1", WriteStatus.done, None, 1, 200),
                   gone: (None, WriteStatus.pending, Reason.contact_gone, 1, None),
                   linked_only: ("c3", WriteStatus.pending, None, 0, None)}


def test_none_is_stored_as_sql_null(db_url: str):
    engine = get_engine(db_url)
    with Session(engine) as s:
        insert_ignore(s, [event("e1")])  # url, names, email, phone: None
        s.commit()
        assert s.exec(select(func.count()).select_from(MailEvent).where(
            MailEvent.url.is_(None), MailEvent.email.is_(None))).one() == 1


def test_enum_members_are_stored_as_their_text(db_url: str):
    engine = get_engine(db_url)
    row = tag_intent()
    row.kind, row.status = WriteKind.tag, WriteStatus.pending
    with Session(engine) as s:
        insert_ignore(s, [row])
        s.commit()
    with engine.connect() as conn:
        # Bound as their value, not their repr: what a report or a plain query reads.
        stored = conn.exec_driver_sql(
            "SELECT kind, status FROM write_ledger WHERE kind = 'tag' AND status = 'pending'")
        assert stored.all() == [("tag", "pending")]


def test_open_rows_are_grouped_by_recipient_and_a_chunk_reads_those_still_selected(
        db_url: str):
    engine = get_engine(db_url)
    who = ["r2", "r1", "r2", "r3", "r1"]  # in ledger order: r2 has the oldest row
    rows = [detached(WriteIntent, intent_key=f"note|e{i}", kind="note", location_id="loc1",
                     drop_id="100", recipient_key=r, event_key=f"e{i}", code="Mailed",
                     body="b", marker=f"ms-{i}") for i, r in enumerate(who)]
    rows.append(detached(WriteIntent, intent_key="note|other", kind="note",
                         location_id="loc2", drop_id="100", recipient_key="r1", code="Mailed"))
    with Session(engine) as s:
        insert_ignore(s, rows)
        s.commit()
        ids = list(s.exec(select(WriteIntent.id).order_by(WriteIntent.id)).all())
    sel = ledger.Selection("loc1")
    by_recipient = ledger.open_rows(engine, sel)
    assert by_recipient == {("100", "r2"): [ids[0], ids[2]], ("100", "r1"): [ids[1], ids[4]],
                            ("100", "r3"): [ids[3]]}
    assert list(by_recipient) == [("100", "r2"), ("100", "r1"), ("100", "r3")]
    ledger.mark(engine, [ids[2]], WriteStatus.done)  # done meanwhile: no longer selected
    chunk = by_recipient[("100", "r2")] + by_recipient[("100", "r3")]
    assert [(r.id, r.recipient_key) for r in ledger.rows_of(engine, sel, chunk)] == [
        (ids[0], "r2"), (ids[3], "r3")]


@pytest.mark.parametrize("sel", [ledger.Selection("loc1"),
                                 ledger.Selection("loc1", ledger.REPLAY_STATUSES,
                                                  max_failed_attempts=None)],
                         ids=["sync", "replay"])
def test_a_selection_admits_in_python_exactly_the_rows_its_sql_selects(
        db_url: str, sel: ledger.Selection):
    engine = get_engine(db_url)
    cases = [(status, attempts) for status in WriteStatus for attempts in (0, 7, 8, 9)]
    rows = [detached(WriteIntent, intent_key=f"tag|{i}", kind="tag", location_id="loc1",
                     drop_id="100", recipient_key=f"r{i}", code="Mailed", status=status,
                     attempts=attempts) for i, (status, attempts) in enumerate(cases)]
    with Session(engine) as s:
        insert_ignore(s, rows)
        s.commit()
    with engine.connect() as conn:
        selected = {(st, n) for st, n in conn.execute(
            sel.where(sa.select(WriteIntent.status, WriteIntent.attempts)))}
    assert {(st, n) for st, n in cases if sel.admits(st, n)} == selected
    assert ("failed", 7) in selected  # the cases reach both sides of the attempts cap
