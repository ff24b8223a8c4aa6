"""The sync against the sandbox over real HTTP: exactly once, whatever fails on the way."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlmodel import Session, col, func, select

from mailsync.store.models import QuarantinedEvent, WriteIntent
from mailsync.store.reasons import Reason
from tests.sync_helpers import rig

FAULTS = "error=0.1,slow=0.03,reset=0.03,drop=0.05,burst429=0.02,slow_seconds=20"


def ledger(ctx, *where):  # type: ignore[no-untyped-def]
    with Session(ctx.engine) as s:
        return s.exec(select(WriteIntent).where(*where)).all()


@pytest.mark.slow
def test_faulty_rounds_end_exact_and_unmatched_recipients_are_rejected(tmp_path):
    with rig(tmp_path, messy=True, timeout=0.5) as r:
        r.sb.set_faults(FAULTS)
        for _ in range(4):
            r.sb.advance(30)
            r.sync()
        r.sb.set_faults(None)
        r.sync()
        end = r.end()
        assert end.exact, end.describe()
        assert end.expected_notes > 100
        stats = r.sb.stats()["highlevel"]["total"]
        assert sum(stats["faults"].values()) > 20  # the faults really happened
        assert stats["faults"].get("drop", 0) > 0
        # Every selected event of a recipient without a contact is a rejected note row.
        rejected = ledger(r.ctx, WriteIntent.kind == "note", WriteIntent.status == "rejected")
        assert len(rejected) == end.unmatched_events > 0
        assert all(row.reason_code == Reason.no_contact for row in rejected)
        assert not ledger(r.ctx, col(WriteIntent.status).in_(["pending", "unknown", "failed"]))
        with Session(r.ctx.engine) as s:
            assert s.exec(select(func.count()).select_from(QuarantinedEvent)).one() > 0


def test_dry_run_plans_but_writes_nothing(tmp_path):
    with rig(tmp_path) as r:
        r.sb.advance(48)
        summary = r.sync(dry_run=True)
        assert sum(c.planned for c in summary.campaigns) > 0
        assert not ledger(r.ctx)
        assert r.sb.stats()["highlevel"]["total"]["requests"] == 0
        assert r.end().missing_notes  # nothing reached HighLevel


@pytest.mark.slow
def test_retrigger_code_fires_on_every_visit(tmp_path):
    """A later visit removes the tag an earlier run added, then adds it again."""
    with rig(tmp_path, seed=5, contacts=60,
             campaigns={"40211": {"retrigger": ["pURLOpened"]}}) as r:
        runs = []
        for _ in range(24):
            r.sb.advance(12)
            runs.append(r.sync().run_id)
        assert r.end().exact
        untags = ledger(r.ctx, WriteIntent.kind == "untag", WriteIntent.status == "done")
        assert untags, "the scenario has pURL visits on the retrigger campaign"
        # A removal happens in each run where the contact already had the tag from before.
        first_run = {}
        for row in sorted(untags, key=lambda u: runs.index(u.run_id)):
            first_run.setdefault(row.contact_id, row.run_id)
        expected = len({(u.contact_id, u.run_id) for u in untags
                        if u.run_id != first_run[u.contact_id]})
        assert expected > 0
        assert r.sb.stats()["writes"]["tags_removed"] == expected


def test_rerun_never_resends_a_done_write(tmp_path):
    with rig(tmp_path) as r:
        r.sb.advance(72)
        r.sync()
        before = r.sb.stats()["writes"]
        again = r.sync()
        assert r.sb.stats()["writes"] == before
        assert sum(loc.calls for loc in again.locations) == 0


def test_create_missing_contacts_upserts_them_without_tags_and_writes_to_them(tmp_path):
    with rig(tmp_path, campaigns={"40211": {"create_missing_contacts": True}}) as r:
        before = {x["data_id"] for x in r.sb.recipients("40211") if not x["hl_contact_id"]}
        assert before, "the scenario has recipients without a contact"
        r.sb.advance(96)
        r.sync()
        after = {x["data_id"]: x for x in r.sb.recipients("40211")}
        assert all(after[d]["hl_contact_id"] for d in before)  # created, and found again
        assert r.sb.stats()["writes"]["contacts_created"] == len(before)
        assert r.end().exact
        rejected = ledger(r.ctx, WriteIntent.drop_id == "40211", WriteIntent.status == "rejected")
        assert rejected == []


@pytest.mark.slow
def test_quota_running_out_mid_contact_leaves_unsent_notes_pending(tmp_path, db_url):
    with rig(tmp_path, db_url) as r:
        r.sb.advance(72)
        reserve = r.settings.highlevel.daily_reserve
        for loc in r.sb.manifest()["locations"]:
            r.sb.set_daily_remaining(loc["id"], reserve + 60)  # runs out part-way
        r.sync()
        # What workflows fire on went first: every tag is written, notes wait.
        assert {t.status for t in ledger(r.ctx, WriteIntent.kind == "tag")} <= {"done",
                                                                                "rejected"}
        notes = ledger(r.ctx, WriteIntent.kind == "note")
        by_status = Counter(n.status for n in notes)
        # Notes marked `unknown` before their contact's POSTs but never sent got their
        # status back: nothing looks "maybe sent" to support, and each waits for the quota.
        assert by_status["unknown"] == 0
        assert by_status["done"] == r.sb.stats()["writes"]["notes_created"] > 0
        waiting = [n for n in notes if n.status == "pending"]
        assert waiting and all(n.reason_code == Reason.daily_quota for n in waiting)
        for loc in r.sb.manifest()["locations"]:
            r.sb.set_daily_remaining(loc["id"], 200_000)  # the next day
        done = r.cli("sync")
        assert done.returncode == 0, done.stdout + done.stderr
        assert r.end().exact
