"""Exactly once at the operator's edges, over real HTTP against the sandbox: another store,
a restored backup, a re-created contact, another working directory, the rate limit."""

from __future__ import annotations

import shutil
from datetime import datetime

from sqlmodel import Session, select

from mailsync.config import DatabaseConfig
from mailsync.store.engine import dispose_engine
from mailsync.store.models import ContactLink, WriteIntent, WriteStatus
from mailsync.store.reasons import Reason
from mailsync.sync.context import SyncContext
from tests.conftest import fresh_pg_schema
from tests.sync_helpers import rig


def _other_store(ctx: SyncContext, url: str) -> SyncContext:
    settings = ctx.settings.model_copy(update={"database": DatabaseConfig(url=url)})
    return SyncContext(settings, timeout=ctx.timeout)


def test_a_new_store_on_an_account_already_synced_sends_no_note_twice(tmp_path, db_url):
    """The first store is lost (deleted, or a second deployment starts): nothing duplicates."""
    with rig(tmp_path, db_url) as r:
        r.sb.advance(72)
        r.sync()
        written = r.end()
        assert written.exact and written.expected_notes > 50, written.describe()
        posts = _note_posts(r)
        with fresh_pg_schema() if "postgresql" in db_url else _sqlite(tmp_path) as other:
            r.ctx = _other_store(r.ctx, other)
            again = r.sync()
            assert sum(c.new_events for c in again.campaigns) > 0  # all of it is new here
            assert r.end().exact, r.end().describe()  # 0 duplicate notes
            assert _note_posts(r) == posts  # none sent again
            assert sum(loc.settle_reads for loc in again.locations) > 0
            steady = r.sync()  # from now on the store knows its contacts
            assert sum(loc.settle_reads for loc in steady.locations) == 0


def _note_posts(r) -> int:  # type: ignore[no-untyped-def]
    routes = r.sb.stats()["highlevel"]["by_route"]
    return int(routes["POST /contacts/{contactId}/notes"]["requests"])


class _sqlite:
    def __init__(self, tmp_path):  # type: ignore[no-untyped-def]
        self.url = f"sqlite:///{tmp_path / 'second' / 'mailsync.db'}"

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        dispose_engine(self.url)


def test_a_store_restored_from_an_older_backup_settles_and_sends_no_note_twice(tmp_path):
    with rig(tmp_path) as r:
        db = tmp_path / "mailsync.db"
        r.sb.advance(48)
        r.sync()
        _close(r)
        shutil.copy(db, tmp_path / "backup.db")
        r.sb.advance(48)
        r.sync()
        assert r.end().exact
        _close(r)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"mailsync.db{suffix}").unlink(missing_ok=True)
        shutil.copy(tmp_path / "backup.db", db)  # the operator restores last week's backup
        settled = r.cli("settle")
        assert settled.returncode == 0, settled.stderr
        assert "contacts settled" in settled.stdout
        # The events since the backup come again; every contact is read before its next note.
        again = r.sync()
        assert sum(c.new_events for c in again.campaigns) > 0
        assert sum(loc.settle_reads for loc in again.locations) > 0
        end = r.end()
        assert end.exact, end.describe()


def _close(r) -> None:  # type: ignore[no-untyped-def]
    """What stopping the process does: every connection to the store closed."""
    dispose_engine(r.settings.database.url)
    r.ctx = SyncContext(r.settings, timeout=r.ctx.timeout)


def test_replay_after_a_400_contact_not_found_lands_on_the_re_created_contact(tmp_path):
    with rig(tmp_path, seed=4, contacts=60, missing_contact_status=400) as r:
        r.sb.advance(24)
        r.sync()
        before = datetime.fromisoformat(r.sb.truth()["clock"])
        r.sb.advance(72)
        who = _email_matched_with_new_events(r, before)
        old = who["hl_contact_id"]
        done_before = {w.id for w in _rows_of(r, who) if w.status == WriteStatus.done}
        r.sb.delete_contact(old)  # support deletes the contact and creates it again
        new = r.sb.create_contact(who["location_id"], email=who["email"],
                                  firstName=who["first_name"])["id"]
        r.sync()
        # HighLevel answered 400 "Contact not found" for the cached link: it is dropped, and
        # whatever the sync could not land on the contact there now waits to be resolved again.
        waiting = [w for w in _rows_of(r, who) if w.status != WriteStatus.done]
        assert all(w.reason_code == Reason.contact_gone and w.contact_id is None
                   for w in waiting)
        replay = r.cli("replay")
        assert replay.returncode == 0, replay.stderr
        rows = _rows_of(r, who)
        assert all(w.status == WriteStatus.done for w in rows)
        since = [w for w in rows if w.id not in done_before]
        assert since and {w.contact_id for w in since} == {new}  # nothing to the dead id
        notes = {n["body"] for c in r.sb.state()["contacts"] if c["id"] == new
                 for n in c["notes"]}
        assert len(notes) == sum(1 for w in since if w.kind == "note") > 0


def _email_matched_with_new_events(r, since: datetime) -> dict:  # type: ignore[no-untyped-def]
    truth = r.sb.truth()
    fresh = {(c["drop_id"], e["data_id"]) for c in truth["campaigns"] for e in c["events"]
             if datetime.fromisoformat(e["event_date"]) > since and not e["malformed"]}
    with Session(r.ctx.engine) as s:
        linked = {k.recipient_key for k in s.exec(select(ContactLink)).all()
                  if k.matched_by == "email"}
    for who in r.sb.recipients():
        if (who["match"] == "email" and (who["drop_id"], who["data_id"]) in fresh
                and f"d:{who['data_id']}" in linked):
            return who
    raise AssertionError("the scenario has no email-matched recipient with new events")


def _rows_of(r, who: dict) -> list[WriteIntent]:  # type: ignore[no-untyped-def]
    with Session(r.ctx.engine) as s:
        return list(s.exec(select(WriteIntent).where(
            WriteIntent.drop_id == who["drop_id"],
            WriteIntent.recipient_key == f"d:{who['data_id']}")).all())


def test_the_deployment_walkthrough_from_another_directory_uses_the_same_store(tmp_path):
    """docs/prefect.md: the example config's relative SQLite URL, run from two directories
    (a worker's pull step changes the working directory)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with rig(tmp_path, "sqlite:///mailsync.db") as r:
        r.sb.advance(48)
        first = r.cli("sync", cwd=tmp_path / "a")
        second = r.cli("sync", cwd=tmp_path / "b")
        assert first.returncode == 0 and second.returncode == 0, second.stderr
        store_lines = {line for out in (first, second) for line in out.stderr.splitlines()
                       if line.startswith("store: ")}
        assert len(store_lines) == 1 and str(tmp_path / "mailsync.db") in store_lines.pop()
        assert not (tmp_path / "a" / "mailsync.db").exists()
        assert r.end().exact, r.end().describe()


def test_a_sync_of_hundreds_of_writes_draws_no_429(tmp_path):
    """The location's pacer keeps inside HighLevel's 100 requests per window."""
    with rig(tmp_path, contacts=80, time_scale=0.02) as r:
        r.sb.advance(96)
        summary = r.sync()
        total = r.sb.stats()["highlevel"]["total"]
        assert sum(loc.calls for loc in summary.locations) > 300
        assert total["rate_limited"] == 0
        assert r.end().exact
