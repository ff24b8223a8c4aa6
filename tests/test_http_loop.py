"""The request loop behind an injected Pacer: every place taken is given back, 429s and
headers reach the pacer, a pacer may defer writes, and both shipped pacers fit the protocol."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest

from mailsync.clients.http import ApiClient, CallStatus
from mailsync.clients.ratelimit import (
    FixedRateLimiter,
    NoPacer,
    Pacer,
    QuotaDeferral,
    WindowPacer,
)

BASE = "https://api.example.com"


class RecordingPacer:
    """A Pacer that notes every call, and defers writes when told to."""

    def __init__(self, defer: bool = False) -> None:
        self.calls: list[str] = []
        self.defer = defer
        self.tickets = 0

    async def acquire(self) -> float:
        self.tickets += 1
        self.calls.append("acquire")
        return float(self.tickets)

    def release(self, sent_at: float | None = None) -> None:
        self.calls.append(f"release:{sent_at:g}")

    def observe(self, headers: Mapping[str, str]) -> None:
        self.calls.append(f"observe:{headers.get('X-Seen', '')}")

    def on_throttled(self, retry_after: float | None = None) -> None:
        self.calls.append(f"throttled:{retry_after}")

    def defer_write(self, reserve: int) -> QuotaDeferral | None:
        return QuotaDeferral(remaining=3, reserve=reserve) if self.defer else None


class Client(ApiClient):
    service = "Example"

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response], pacer: Any,
                 **kw: Any) -> None:
        self.sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        super().__init__(BASE, transport=httpx.MockTransport(handler), pacer=pacer,
                         sleep=sleep, rng=random.Random(5), **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_shipped_pacers_satisfy_the_protocol() -> None:
    for pacer in (WindowPacer(), FixedRateLimiter(3, 1.0), NoPacer(), RecordingPacer()):
        assert isinstance(pacer, Pacer)


def test_each_attempt_takes_a_place_gives_it_back_and_reports_what_it_learned() -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "2", "X-Seen": "a"}),
                    httpx.Response(200, json={"ok": True}, headers={"X-Seen": "b"})])
    pacer = RecordingPacer()
    client = Client(lambda r: next(answers), pacer)
    out = run(client.send("GET", "/x", idempotent=True))
    assert out.ok and out.attempts == 2 and client.throttled == 1
    assert pacer.calls == ["acquire", "release:1", "observe:a", "throttled:2.0",
                           "acquire", "release:2", "observe:b"]
    assert client.sleeps == [2.0]


@pytest.mark.parametrize("where", ["auth", "transport", "cancel"])
def test_a_place_is_given_back_however_the_attempt_ends(where: str) -> None:
    pacer = RecordingPacer()

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200)

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("cut", request=request)

    class Failing(Client):
        async def _auth_headers(self) -> dict[str, str]:
            raise RuntimeError("the token store is down")

    async def scenario() -> None:
        if where == "auth":
            with pytest.raises(RuntimeError):
                await Failing(broken, pacer).send("GET", "/x", idempotent=True)
        elif where == "transport":
            out = await Client(broken, pacer, max_attempts=2).send("POST", "/x",
                                                                    idempotent=False)
            assert out.status == CallStatus.unknown  # sent, connection cut: maybe done
        else:
            task = asyncio.ensure_future(Client(slow, pacer).send("GET", "/x", idempotent=True))
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(scenario())
    assert pacer.calls.count("acquire") == 1
    assert pacer.calls.count("release:1") == 1


def test_a_pacer_may_defer_writes_but_never_reads() -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        return httpx.Response(200, json={})

    client = Client(handler, RecordingPacer(defer=True), daily_reserve=10)
    out = run(client.send("POST", "/x", idempotent=True, write=True))
    assert out.status == CallStatus.deferred and out.attempts == 0 and sent == []
    assert out.reason == ("daily quota: 3 requests left today for Example, 10 kept in "
                          "reserve; not sent")
    assert run(client.send("GET", "/x", idempotent=True)).ok and sent == ["GET"]


def test_a_429_slows_everyone_sharing_a_fixed_rate_limiter() -> None:
    now = [0.0]
    limiter = FixedRateLimiter(3, 1.0, clock=lambda: now[0])
    limiter.on_throttled()  # no Retry-After: sit out one whole window
    assert limiter._try_take() == pytest.approx(1.0)
    now[0] = 1.06  # the window (1 s plus its 5 % margin) the 429 declared spent has passed
    assert limiter._try_take() == 0.0
    limiter.on_throttled(4.0)
    assert limiter._try_take() == pytest.approx(4.0) and limiter.throttled == 2


def test_window_pacer_defers_writes_only_at_the_reserve() -> None:
    pacer = WindowPacer(clock=lambda: 0.0)
    assert pacer.defer_write(10) is None  # nothing heard yet
    pacer.observe({"X-RateLimit-Daily-Remaining": "11"})
    assert pacer.defer_write(10) is None
    pacer.observe({"X-RateLimit-Daily-Remaining": "10"})
    assert pacer.defer_write(10) == QuotaDeferral(remaining=10, reserve=10)


def test_the_resend_after_a_refresh_does_not_count_as_a_retry() -> None:
    answers = iter([httpx.Response(401), httpx.Response(503), httpx.Response(503)])

    class Refreshing(Client):
        refreshed = 0

        async def _reauthorize(self, response: httpx.Response) -> bool:
            self.refreshed += 1
            return True

    client = Refreshing(lambda r: next(answers), NoPacer(), max_attempts=2)
    out = run(client.send("GET", "/x", idempotent=True))
    # 401, then a free resend after the refresh, then one retry: 3 sent, 2 counted.
    assert out.status == CallStatus.failed and out.attempts == 3 and client.refreshed == 1
    assert len(client.sleeps) == 1
