"""The receiver over real HTTP: what it answers, what it stores, what it never says."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, func, select

from mailsync.sandbox.webhooks import webhook_payload
from mailsync.store.models import MailEvent, QuarantinedEvent, WriteIntent
from mailsync.store.reasons import QuarantineReason
from mailsync.webhook import app as receiver_app
from mailsync.webhook.app import MAX_BODY
from mailsync.webhook.trigger import ApplyCoalescer, Next
from tests.webhook_helpers import SECRET, webhook_rig


class Counting(ApplyCoalescer):
    """A trigger that records notices and applies nothing."""

    def __init__(self) -> None:
        super().__init__(self._apply)
        self.notices: list[str] = []

    def notify(self, location_id: str) -> None:
        self.notices.append(location_id)

    async def _apply(self, location_id: str) -> Next:
        return Next.idle


def counts(engine) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return tuple(s.exec(select(func.count()).select_from(m)).one()
                     for m in (MailEvent, QuarantinedEvent, WriteIntent))  # type: ignore[return-value]


def a_payload(w, drop_id: str, carried_only: bool = True) -> dict:  # type: ignore[no-untyped-def]
    """The documented payload of the campaign's first emitted event (of a carried recipient)."""
    camp = w.sb.sandbox.scenario.campaign(drop_id)
    for ev in camp.events:
        if not carried_only or ev.recipient.match == "carried":
            return webhook_payload(ev)
    raise AssertionError("no event yet")


def test_refusals_change_nothing_and_a_good_event_is_committed_once(tmp_path, db_url, caplog):
    trigger = Counting()
    with webhook_rig(tmp_path, db_url, trigger=trigger, contacts=12) as w:
        w.sb.advance(12)
        drop = w.drops()[0]
        body = a_payload(w, drop)
        engine = w.ctx.engine
        caplog.set_level(logging.DEBUG, logger="mailsync")
        before = counts(engine)

        wrong = w.post(drop, body, key="not-the-key-at-all-00")
        missing = httpx.post(w.url(drop).split("?")[0], json=body, timeout=10)
        unknown = httpx.post(f"{w.receiver.url}/postalytics/99999?key={SECRET}", json=body,
                             timeout=10)
        assert [r.status_code for r in (wrong, missing, unknown)] == [404, 404, 404]
        assert wrong.json() == unknown.json()  # nothing tells a wrong key from a campaign
        big = w.post(drop, content=b'{"pad": "' + b"x" * MAX_BODY + b'"}')
        assert big.status_code == 413
        for content in (b"not json {", b"\xff\xfe\x00", b"", b"[1, 2]", b"42"):
            bad = w.post(drop, content=content)
            assert bad.status_code == 400 and bad.json()["error"], content
        assert counts(engine) == before and trigger.notices == []

        ok = w.post(drop, body)
        assert ok.status_code == 202 and ok.json()["event"] == "stored"
        after = counts(engine)
        assert after[0] == before[0] + 1 and after[2] > before[2]
        assert trigger.notices == [w.settings.campaign(drop).location]
        for _ in range(2):  # a redelivery: acknowledged, never written again
            again = w.post(drop, {**body, "retryAttempts": 1})
            assert again.status_code == 202 and again.json()["event"] == "duplicate"
        assert counts(engine) == after and len(trigger.notices) == 1

        # The key and whole bodies never reach a log line.
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert SECRET not in text and "not-the-key-at-all-00" not in text
        assert body["To"]["name"] not in text


def test_a_malformed_event_is_quarantined_once_with_its_reason(tmp_path):
    with webhook_rig(tmp_path, trigger=Counting(), contacts=12) as w:
        w.sb.advance(12)
        drop = w.drops()[0]
        body = {**a_payload(w, drop), "eventType": 42}
        first = w.post(drop, body)
        assert first.status_code == 400
        assert "not a known event code" in first.json()["error"]
        retried = w.post(drop, {**body, "retryAttempts": 3, "status": 400})
        assert retried.status_code == 400
        with Session(w.ctx.engine) as s:
            [q] = s.exec(select(QuarantinedEvent)).all()
            assert s.exec(select(func.count()).select_from(MailEvent)).one() == 0
        assert q.reason_code == QuarantineReason.unknown_code and q.drop_id == drop
        assert json.loads(q.payload)["eventType"] == 42


def test_a_body_of_exactly_the_limit_is_read(tmp_path):
    with webhook_rig(tmp_path, trigger=Counting(), contacts=12) as w:
        w.sb.advance(12)
        drop = w.drops()[0]
        body = a_payload(w, drop)
        text = json.dumps({**body, "pad": ""})
        padded = json.dumps({**body, "pad": "x" * (MAX_BODY - len(text))}).encode()
        assert len(padded) == MAX_BODY
        assert w.post(drop, content=padded).status_code == 202


def test_an_unreachable_store_answers_503_so_postalytics_retries(tmp_path, monkeypatch):
    def down(*args: object) -> None:
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    with webhook_rig(tmp_path, trigger=Counting(), contacts=12) as w:
        w.sb.advance(12)
        drop = w.drops()[0]
        monkeypatch.setattr(receiver_app, "receive_event", down)
        resp = w.post(drop, a_payload(w, drop))
        assert resp.status_code == 503 and resp.headers["retry-after"]


@pytest.mark.parametrize("given", [None, "", "x", SECRET[:-1], SECRET + "x", SECRET.upper()])
def test_only_the_exact_key_matches(given: str | None):
    from mailsync.redact import Secret
    from mailsync.webhook.app import key_matches

    assert not key_matches(given, Secret(SECRET))
    assert key_matches(SECRET, Secret(SECRET))
