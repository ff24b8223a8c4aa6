"""Fetch through the sandbox over real HTTP: a server capping its pages below PageSize loses
no event, whichever offset it uses, and the documented server costs at most one page request
more than the new events fill."""

from __future__ import annotations

import asyncio
import math

import pytest
from sqlmodel import Session, select

from mailsync.config import CampaignConfig
from mailsync.sandbox.postalytics_api import CapOffset
from mailsync.store.models import MailEvent
from mailsync.sync.fetch import CampaignResult
from mailsync.sync.runner import fetch_and_plan
from mailsync.sync.walker import Stop
from tests.sync_helpers import Rig, rig

EVENTS_ROUTE = "GET /campaigns/{id}/events"


def event_requests(r: Rig) -> int:
    return r.sb.stats()["postalytics"]["by_route"].get(EVENTS_ROUTE, {}).get("requests", 0)


def fetch(r: Rig, camp: CampaignConfig, **kw: object) -> tuple[CampaignResult, int]:
    """Fetch one campaign; its result and the event page requests it made."""
    before = event_requests(r)
    result = asyncio.run(fetch_and_plan(r.ctx, camp, "test-run", **kw))  # type: ignore[arg-type]
    return result, event_requests(r) - before


def assert_all_stored(r: Rig, camp: CampaignConfig) -> None:
    [truth] = r.sb.truth(camp.drop_id)["campaigns"]
    with Session(r.ctx.engine) as s:
        stored = set(s.exec(select(MailEvent.key).where(MailEvent.drop_id == camp.drop_id)))
    assert stored == {f"e:{camp.drop_id}:{e['event_id']}" for e in truth["events"]}


@pytest.mark.parametrize("cap_offset", list(CapOffset))
def test_a_sandbox_capping_pages_at_25_loses_no_event(tmp_path, cap_offset):
    with rig(tmp_path, contacts=200) as r:
        r.sb.sandbox.postalytics.page_cap = 25
        r.sb.sandbox.postalytics.cap_offset = cap_offset
        r.sb.advance(24 * 3)
        for camp in r.settings.campaigns:
            result, _ = fetch(r, camp)
            assert result.stopped is Stop.ended and result.new_events > 100
            assert_all_stored(r, camp)
        r.sb.advance(48)
        camp = r.settings.campaigns[0]
        assert fetch(r, camp)[0].new_events > 25
        assert_all_stored(r, camp)


def test_the_documented_sandbox_costs_at_most_one_page_more_than_the_new_events_fill(tmp_path):
    """While the lookback holds fewer than a page of stored events (here 1 h of them)."""
    with rig(tmp_path, contacts=200) as r:
        camp = r.settings.campaigns[1]
        r.sb.advance(24 * 3)
        for hours in (0, 24, 24, 0):
            r.sb.advance(hours)
            result, requests = fetch(r, camp, lookback_hours=1)
            assert requests <= math.ceil(result.new_events / 100) + 1, (result, requests)
            assert_all_stored(r, camp)
        assert result.new_events == 0 and requests == 1
