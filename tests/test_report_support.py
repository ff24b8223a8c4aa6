"""What a support person reads, on a sandbox scenario: problems grouped by recipient and
cause, names for ids, true counts, a cumulative journey, a campaign no longer configured
shown apart, times in the operator's zone; report.html opened in headless Chromium before
and after the fix and the replay (the screenshots docs/support.md shows).

Expected values come from the sandbox's own truth (its recipients and events), never from
the report under test.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session

from mailsync.codes import MAIL_CODES, EventCode
from mailsync.report.build import build_report
from mailsync.report.frames import records
from mailsync.report.render import write_report_files
from mailsync.store.engine import get_engine
from mailsync.store.models import Campaign, MailEvent
from mailsync.sync.runner import run_replay
from tests.browser import browser_page, shot_dir
from tests.sync_helpers import Rig, rig

ZONE = "America/Toronto"
JOURNEY = [c for c in MAIL_CODES if MAIL_CODES.index(c) <= MAIL_CODES.index(
    EventCode.ProcessedForDelivery)]


def _truth(r: Rig) -> dict[str, Any]:
    """Per campaign: its events, and per recipient the codes they had (from the sandbox)."""
    out: dict[str, Any] = {}
    for camp in r.sb.truth()["campaigns"]:
        codes: dict[str, set[str]] = defaultdict(set)
        for ev in camp["events"]:
            codes[f"d:{ev['data_id']}"].add(ev["code"])
        out[str(camp["drop_id"])] = {"events": camp["events"], "codes": codes}
    return out


def _no_contact(r: Rig, truth: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The recipients with events and no HighLevel contact, by (drop id, recipient key)."""
    return {(str(x["drop_id"]), f"d:{x['data_id']}"): x for x in r.sb.recipients()
            if x["hl_contact_id"] is None
            and truth[str(x["drop_id"])]["codes"].get(f"d:{x['data_id']}")}


def _add_mistaken_campaign(r: Rig) -> str:
    """A drop id once configured by mistake, under another campaign's name, with an event."""
    real = r.settings.campaigns[0]
    with Session(r.ctx.engine) as s:
        s.add(Campaign(drop_id="99999", name=real.name, country="US",
                       location_id=real.location))
        s.add(MailEvent(key="e:99999:1", drop_id="99999", recipient_key="d:1",
                        code="Mailed", event_at=datetime(2026, 11, 2, tzinfo=UTC)))
        s.commit()
    return str(real.name)


def _assert_cumulative(report: Any, truth: dict[str, Any]) -> None:
    """The journey is cumulative: a piece counts at every step up to its furthest scan."""
    for drop, t in truth.items():
        rows = report.funnel[(report.funnel["drop_id"] == drop)
                             & (report.funnel["stage"] == "journey")]
        reached = rows.set_index("code")["recipients"].to_dict()
        for code, n in reached.items():
            i = MAIL_CODES.index(EventCode(code))
            want = sum(1 for codes in t["codes"].values()
                       if any(MAIL_CODES.index(EventCode(c)) >= i
                              for c in codes if EventCode(c) in JOURNEY))
            assert n == want, (drop, code)
        assert list(rows["recipients"]) == sorted(rows["recipients"], reverse=True)


def test_support_reads_grouped_named_true_counts_and_a_cumulative_journey(
        tmp_path: Path) -> None:
    with rig(tmp_path, seed=5, contacts=40) as r:
        r.sb.advance(48)
        r.sync()
        r.sb.advance(48)
        r.sync()  # the second run re-reads the lookback window: reads > new
        truth = _truth(r)
        missing = _no_contact(r, truth)
        assert missing
        settings = r.settings.model_copy(update={"timezone": ZONE})
        mistaken_name = _add_mistaken_campaign(r)
        report = build_report(r.ctx.engine, settings=settings)

        # One row per recipient and cause: every no-contact recipient once, all their
        # writes (a tag and a note per code) counted there; nothing else is a problem.
        groups = report.problem_groups
        assert len(groups) == len(missing) < len(report.problems)
        assert set(groups["problem"]) == {"no_contact"}
        for g in groups.to_dict("records"):
            codes = truth[g["drop_id"]]["codes"][g["recipient_key"]]
            assert g["writes"] == 2 * len(codes) == g["tags"] + g["notes"]
            assert g["codes"] == ", ".join(c.value for c in MAIL_CODES if c.value in codes)
            person = missing[(g["drop_id"], g["recipient_key"])]
            assert g["recipient"] == f"{person['first_name']} {person['last_name']}"
            # Names, with the ids beside them.
            camp = r.settings.campaign(g["drop_id"])
            assert (g["campaign"], g["location"]) == (
                camp.name, r.settings.location(camp.location).name)
            assert g["location_id"] == camp.location
        # The detail level: each write under its group's number.
        assert report.problems.groupby("group").size().to_dict() == dict(
            zip(groups["group"], groups["writes"], strict=True))

        # Do this first: one fix per location with missing contacts, the biggest first.
        steps = report.first_steps(limit=10)
        per_location: dict[str, int] = defaultdict(int)
        for g in groups.to_dict("records"):
            per_location[g["location_id"]] += g["writes"]
        assert dict(zip(steps["location_id"], steps["writes"], strict=True)) == per_location
        assert list(steps["writes"]) == sorted(steps["writes"], reverse=True)
        assert list(groups["step"]) == sorted(groups["step"])

        # True counts: events seen are the distinct events Postalytics served, however often
        # they were read; the runs' reads count the re-reads.
        configured, apart = report.configured_summary()
        seen = configured.groupby("drop_id")["events_seen"].sum().to_dict()
        assert seen == {d: len(t["events"]) for d, t in truth.items()}
        assert report.runs["events_read"].sum() > report.runs["events_new"].sum() == sum(
            seen.values())
        # The mistaken drop id is apart, labelled, and never under the real campaign's name.
        assert list(apart["drop_id"]) == ["99999"]
        assert apart["campaign"].iloc[0] == "drop 99999 (no longer configured)"
        assert mistaken_name not in set(apart["campaign"])

        _assert_cumulative(report, truth)

        # Times in the operator's zone, in every format.
        paths = write_report_files(report, tmp_path / "before")
        data = json.loads((tmp_path / "before" / "report.json").read_text())
        assert data["timezone"] == ZONE
        assert data["problems"][0]["since"].endswith(("-05:00", "-04:00"))
        assert "Times are in America/Toronto" in (tmp_path / "before" / "report.html"
                                                  ).read_text()
        assert {p.name for p in paths} >= {"problems.csv", "problem_writes.csv"}


def test_support_walkthrough_in_a_real_browser(tmp_path: Path) -> None:
    """The walk-through of docs/support.md: a rejected write, its cause, the fix, the replay,
    and the report afterwards, each page opened in headless Chromium."""
    shots = shot_dir(tmp_path)
    with rig(tmp_path, seed=5, contacts=40) as r:
        r.sb.advance(72)
        r.sync()
        report = build_report(r.ctx.engine, settings=r.settings)
        write_report_files(report, tmp_path / "before")
        first = report.problem_groups.iloc[0]
        with browser_page() as page:
            page.goto((tmp_path / "before" / "report.html").as_uri())
            text = page.inner_text("body")
            assert "Do this first" in text and "Problems by recipient" in text
            assert str(first["recipient"]) in text and str(first["location"]) in text
            assert str(first["campaign"]) in text
            # The writes of a group are folded until asked for.
            detail = page.locator("tr.detail details").first
            assert not detail.locator("table").is_visible()
            page.screenshot(path=str(shots / "support-1-report.png"))
            detail.locator("summary").click()
            assert detail.locator("table").is_visible()
            rows = detail.locator("table tbody tr").count()
            assert rows == int(first["writes"])
            detail.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "support-2-writes.png"))

        # The fix: create the HighLevel contacts the report names, then replay.
        for x in r.sb.recipients():
            if x["hl_contact_id"] is None:
                r.sb.create_contact(x["location_id"], firstName=x["first_name"],
                                    lastName=x["last_name"], email=x["email"],
                                    phone=x["phone"])
        replay = asyncio.run(run_replay(r.ctx))
        assert not replay.errors
        after = build_report(r.ctx.engine, settings=r.settings)
        assert after.problems.empty and after.problem_groups.empty
        write_report_files(after, tmp_path / "after")
        with browser_page() as page:
            page.goto((tmp_path / "after" / "report.html").as_uri())
            text = page.inner_text("body")
            assert "No problem writes: everything planned was written." in text
            assert "Do this first" not in text
            page.screenshot(path=str(shots / "support-3-after-replay.png"))
        assert r.end().exact


def test_pending_deadline_still_counts_from_planning(tmp_path: Path) -> None:
    """The zone changes how times are shown, never what is overdue."""
    with rig(tmp_path, seed=5, contacts=20) as r:
        r.sb.advance(48)
        r.sync()
        utc = build_report(r.ctx.engine, pending_deadline=timedelta(hours=1))
        far = build_report(r.ctx.engine, pending_deadline=timedelta(hours=1),
                           settings=r.settings.model_copy(update={"timezone": "Asia/Tokyo"}))
        assert utc.problem_counts() == far.problem_counts()
        assert far.generated_at.utcoffset() == timedelta(hours=9)


def test_campaigns_the_config_leaves_unnamed_take_postalytics_names(tmp_path: Path) -> None:
    from mailsync.config import CampaignConfig, LocationConfig, Settings
    from mailsync.report.names import postalytics_names
    from tests.report_store import CA, LOC_A, LOC_B, NOW, US, make_store

    class Postalytics:
        async def list_campaigns(self) -> list[dict[str, Any]]:
            return [{"drop_id": int(US), "name": "Spring postcard, Boston"},
                    {"drop_id": 1, "name": "not ours"}]

    class Down:
        async def list_campaigns(self) -> list[dict[str, Any]]:
            raise RuntimeError("Postalytics is down")

    assert asyncio.run(postalytics_names(Postalytics(), [US])) == {
        US: "Spring postcard, Boston"}
    assert asyncio.run(postalytics_names(Down(), [US])) == {}
    settings = Settings(
        locations=(LocationConfig(id=LOC_A, name="Boston office", token_env="A"),
                   LocationConfig(id=LOC_B, token_env="B")),
        campaigns=(CampaignConfig(drop_id=US, location=LOC_A),
                   CampaignConfig(drop_id=CA, location=LOC_B, country="CA", name="Toronto")))
    engine = make_store(f"sqlite:///{tmp_path / 'n.db'}")
    report = build_report(engine, settings=settings, now=NOW,
                          postalytics_names={US: "Spring postcard, Boston"})
    names = report.summary.set_index("drop_id")
    assert names.loc[US, "campaign"] == "Spring postcard, Boston"  # Postalytics' name
    assert names.loc[CA, "campaign"] == "Toronto"  # the config's name wins
    assert names.loc[US, "location"] == "Boston office"
    assert names.loc[CA, "location"] == LOC_B  # no name configured: the id
    # Without a config: the store's names, every campaign shown, nothing labelled apart.
    bare = build_report(engine, now=NOW).summary.set_index("drop_id")
    assert bare.loc[US, "campaign"] == "Fall US Postcard" and bare["configured"].isna().all()


def test_quarantined_events_show_what_came_in_words_and_zone_without_personal_fields(
        tmp_path: Path) -> None:
    from mailsync.config import Settings
    from mailsync.store.models import QuarantinedEvent
    from mailsync.store.reasons import QuarantineReason

    engine = get_engine(f"sqlite:///{tmp_path / 'q.db'}")
    payload = {"Event": "Teleported To Mars", "EventId": "0098c4", "DataId": 88010,
               "EventDate": "2026-11-02T03:43:07Z", "FirstName": "Adele", "LastName": "Byrne",
               "Email": "adele.byrne@example.com", "Phone": "+15555550123",
               "Address": {"Street": "160 Harbour Rd", "City": "Austin", "Zip": "78701"}}
    with Session(engine) as s:
        s.add(QuarantinedEvent(fingerprint="q:1", drop_id="40211", payload=json.dumps(payload),
                               reason="unknown event label 'Teleported To Mars'",
                               reason_code=QuarantineReason.unknown_code))
        s.commit()
    report = build_report(engine, settings=Settings(timezone=ZONE))
    q = report.quarantined.iloc[0]
    assert (q["event"], q["event_id"], q["recipient"]) == (
        "Teleported To Mars", "0098c4", "Postalytics id 88010")
    assert q["event_date"] == "2026-11-01 22:43"  # Toronto time (EST from Nov 1)
    assert q["email"] == "a***@example.com"
    assert q["reason"] == "not a known event code: unknown event label 'Teleported To Mars'"
    assert q["action"].startswith("if Postalytics added a new event")
    shown = json.dumps(records(report.quarantined))
    for personal in ("Adele", "Byrne", "5555550123", "Harbour", "Austin", "78701"):
        assert personal not in shown, personal
