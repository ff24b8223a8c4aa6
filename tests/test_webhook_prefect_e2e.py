"""Mode `prefect` end to end: a real Prefect server, prefect.yaml deployed to a process pool,
a worker, and the receiver (`mailsync webhook serve`) emitting the location's event; the
`mailsync-apply` deployment's trigger runs the apply flow, which writes to HighLevel."""

from __future__ import annotations

import os
import time

import httpx
import pytest
from sqlmodel import Session, select

from bench.webhook_latency import prefect_stack, receiver
from mailsync.store.models import MailEvent, WriteIntent, WriteStatus
from mailsync.sync.normalise import RecipientKind, recipient_kind
from tests.sync_helpers import rig
from tests.webhook_helpers import SECRET, SECRET_ENV, add_webhooks_section

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _written(engine) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(notes planned for identified webhook events, of them done)."""
    with Session(engine) as s:
        known = {e.key for e in s.exec(select(MailEvent)).all()
                 if recipient_kind(e.recipient_key) != RecipientKind.unidentified}
        notes = [r for r in s.exec(select(WriteIntent).where(WriteIntent.kind == "note")).all()
                 if r.event_key in known]
    return len(notes), sum(r.status == WriteStatus.done for r in notes)


def test_webhooks_reach_highlevel_through_the_deployment_trigger(tmp_path):
    with rig(tmp_path, seed=5, contacts=30) as r:
        add_webhooks_section(r.config, mode="prefect")
        env = {**os.environ, SECRET_ENV: SECRET}
        with prefect_stack(tmp_path, r.config, env) as client, \
                receiver(r.config, {**env, **client}, tmp_path) as base:
            r.sb.set_webhooks({c.drop_id: f"{base}/postalytics/{c.drop_id}?key={SECRET}"
                               for c in r.settings.campaigns})
            r.sb.advance(30)
            r.sb.wait_webhooks()
            deadline = time.monotonic() + 180
            planned, done = _written(r.ctx.engine)
            while (done < planned or planned == 0) and time.monotonic() < deadline:
                time.sleep(1)
                planned, done = _written(r.ctx.engine)
            log = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
            assert planned > 0 and done == planned, log
            runs = httpx.post(client["PREFECT_API_URL"] + "/flow_runs/filter", json={
                "deployments": {"name": {"any_": ["mailsync-apply"]}}}, timeout=10).json()
        # Coalesced: a handful of runs for dozens of webhooks over three locations.
        assert 1 <= len(runs) <= 20
        assert {tuple(run["parameters"]["locations"]) for run in runs} <= {
            (c.location,) for c in r.settings.campaigns}
        r.sync()  # the schedule names the people the webhooks could not
        assert r.end().exact
