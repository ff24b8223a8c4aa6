"""The `prefect` mode's glue: the receiver's event, and the deployment trigger that runs the
apply flow for the location it names (checked with Prefect's own trigger and templating)."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailsync.webhook.trigger import LOCATION_EVENT
from tasks import webhook_events
from tasks.webhook_events import location_event, prefect_emitter

ROOT = Path(__file__).resolve().parents[1]


def apply_deployment() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return next(d for d in doc["deployments"] if d["name"] == "mailsync-apply")


def test_the_apply_deployment_runs_the_apply_flow_on_the_receivers_event():
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    dep = apply_deployment()
    assert dep["entrypoint"] == "flows/apply.py:apply_locations" and dep["schedules"] == []
    [raw] = dep["triggers"]
    trigger = DeploymentEventTrigger.model_validate(raw)
    assert trigger.expect == {LOCATION_EVENT} and trigger.enabled
    assert trigger.for_each == {"prefect.resource.id"}  # one bucket per location


def test_the_trigger_matches_only_our_event_and_names_the_location():
    from prefect.server.events.actions import RunDeployment
    from prefect.server.events.schemas.automations import EventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    raw = apply_deployment()["triggers"][0]
    trigger = EventTrigger.model_validate(
        {k: v for k, v in raw.items() if k not in ("parameters", "enabled")})

    def received(**fields: Any) -> ReceivedEvent:
        return ReceivedEvent(id=uuid.uuid4(), occurred=datetime.now(UTC), **fields)

    ours = received(**location_event("p3hJajHDfTVxMkMmq2P5"))
    assert trigger.covers(ours)
    assert not trigger.covers(received(event="mailsync.something-else",
                                       resource={"prefect.resource.id": "mailsync.location.x"}))
    assert not trigger.covers(received(event=LOCATION_EVENT,
                                       resource={"prefect.resource.id": "other.thing"}))
    # The parameters, rendered as Prefect renders them when the trigger fires.
    params = copy.deepcopy(raw["parameters"])
    RunDeployment._upgrade_v1_templates(params)
    rendered = hydrate(params, HydrationContext(render_jinja=True, jinja_context={"event": ours}))
    assert rendered == {"locations": ["p3hJajHDfTVxMkMmq2P5"]}


def test_the_flow_accepts_the_rendered_parameters():
    from flows.apply import apply_locations

    props = apply_locations.parameters.model_dump()["properties"]
    assert set(props) == {"locations", "config_path", "lease_wait_seconds", "linger_seconds"}
    assert all(p.get("description") for p in props.values())


def test_the_emitter_sends_the_event_and_says_when_prefect_took_none(
        monkeypatch: pytest.MonkeyPatch):
    import prefect.events
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mailsync.config import ConfigError

    with temporary_settings(updates={PREFECT_API_URL: None}), \
            pytest.raises(ConfigError, match="PREFECT_API_URL"):
        prefect_emitter()
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(prefect.events, "emit_event",
                        lambda **kw: sent.append(kw) or object())
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        emit = prefect_emitter()
        emit("loc-7")
        assert sent == [location_event("loc-7")]
        assert sent[0]["resource"]["prefect.resource.id"] == "mailsync.location.loc-7"
        monkeypatch.setattr(prefect.events, "emit_event", lambda **kw: None)
        with pytest.raises(RuntimeError, match="PREFECT_API_URL"):
            prefect_emitter()("loc-7")
    assert webhook_events.LOCATION_EVENT == LOCATION_EVENT


def test_the_receiver_library_never_imports_prefect():
    import subprocess
    import sys

    code = ("import sys, mailsync.webhook.service, mailsync.cli.webhook, "
            "mailsync.report.webhooks; print(any(m == 'prefect' or m.startswith('prefect.') "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_the_triggered_apply_stays_for_the_webhooks_that_follow(tmp_path):
    import threading
    import time

    from sqlmodel import Session, select

    from mailsync.sandbox.webhooks import webhook_payload
    from mailsync.store.leases import lease_holder
    from mailsync.store.models import WriteIntent, WriteStatus
    from tasks.webhook_events import apply_and_stay
    from tests.test_webhook_receiver import Counting
    from tests.webhook_helpers import webhook_rig

    with webhook_rig(tmp_path, trigger=Counting(), contacts=30) as w:
        w.sb.advance(30)
        drop = w.settings.campaigns[0]
        carried = [e for e in w.sb.sandbox.scenario.campaign(drop.drop_id).events
                   if e.recipient.match == "carried"]
        assert w.post(drop.drop_id, webhook_payload(carried[0])).status_code == 202
        out: dict = {}
        run = threading.Thread(target=lambda: out.update(apply_and_stay.fn(
            str(w.rig.config), drop.location, linger_seconds=1.5)))
        started = time.monotonic()
        run.start()
        time.sleep(0.8)
        held = lease_holder(w.ctx.engine, drop.location)
        for ev in carried[1:4]:  # webhooks while the run stays
            assert w.post(drop.drop_id, webhook_payload(ev)).status_code == 202
        run.join(timeout=60)
        took = time.monotonic() - started
        with Session(w.ctx.engine) as s:
            notes = s.exec(select(WriteIntent).where(WriteIntent.kind == "note")).all()
        assert len(notes) == 4 and all(n.status == WriteStatus.done for n in notes)
        assert held is not None  # it holds the location while it stays
        assert lease_holder(w.ctx.engine, drop.location) is None  # and lets go when it leaves
        assert out["outcomes"]["done"] >= 8 and out["stopped"] is None
        assert 1.5 < took < 30
