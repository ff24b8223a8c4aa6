"""Postalytics' webhooks, simulated: each new event POSTed to its campaign's URL as the clock
advances, over real HTTP, from a background task of the sandbox server.

The payload is the documented one (API-FACTS): `mailId` (the piece, not the recipient),
`eventDate`, `expectedDeliveryDate` (empty when unknown: the structure is sent every time),
the integer `eventType`, the delivery's own `status`/`statusDescription`/`retryAttempts`, a
`To` section with the receiver's name, address, city, state and zip, and `meta.fields` with
the list's variable data. No event id, no recipient id, no email: the receiver must match.

What real deliveries do, switchable (`WebhookOptions`): duplicates (an event sent twice),
reordering (each clock step's events shuffled, several in flight at once), retries of a
non-2xx answer or a failed connection (`retry_attempts`, counted in `retryAttempts`) and
lost deliveries (never sent). Seeded: the same seed and steps give the same choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import httpx

from mailsync.codes import WEBHOOK_TYPE
from mailsync.sandbox.scenario import Event, iso
from mailsync.sync.normalise import short_hash

UNKNOWN_EVENT_TYPE = 99
"""What a malformed event (messy scenario) is sent as: an eventType no table knows."""


@dataclass
class WebhookOptions:
    """How deliveries misbehave; rates are probabilities per event."""

    duplicate_rate: float = 0.0
    reorder: bool = False
    lost_rate: float = 0.0
    retry_attempts: int = 3
    """Further attempts after a non-2xx answer or a failed connection."""
    retry_delay: float = 0.5
    """Seconds before the first retry (doubled for each further one)."""
    concurrency: int = 4
    """Deliveries in flight at once (more than one reorders them too)."""
    timeout: float = 10.0
    max_per_second: float = 0.0
    """Deliveries started per second at most (0: as fast as the receiver answers): a
    steady stream rather than each clock step's events at once."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> WebhookOptions:
        """Options from JSON keys; unknown keys or bad values are a ValueError."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown webhook option {unknown[0]!r}")
        out = cls(**{k: type(getattr(cls(), k))(v) for k, v in data.items()})
        for rate in ("duplicate_rate", "lost_rate"):
            if not 0 <= getattr(out, rate) <= 1:
                raise ValueError(f"{rate} must be between 0 and 1")
        if out.retry_attempts < 0 or out.concurrency < 1 or out.max_per_second < 0:
            raise ValueError("retry_attempts must be >= 0 and concurrency >= 1")
        return out


def mail_id(ev: Event) -> str:
    """The piece's id (Postalytics': internal, one per piece, the same for all its events)."""
    return "mp_" + short_hash(ev.drop_id, ev.recipient.data_id, length=20)


def webhook_payload(ev: Event, attempt: int = 0, last_status: int = 0) -> dict[str, Any]:
    """The documented webhook body for one event."""
    r = ev.recipient
    event_type = UNKNOWN_EVENT_TYPE if ev.malformed else WEBHOOK_TYPE[ev.code]
    return {
        "mailId": mail_id(ev), "eventDate": iso(ev.at),
        "expectedDeliveryDate": ev.expected_delivery or "", "eventType": event_type,
        "status": last_status, "statusDescription": "" if not last_status else "failed",
        "retryAttempts": attempt,
        "To": {"name": f"{r.first_name} {r.last_name}", "address": r.address.get("Street", ""),
               "city": r.address.get("City", ""), "state": r.address.get("State", ""),
               "zip": r.address.get("Zip", ""), "errorCodes": [], "addressUpdate": None},
        "meta": {"fields": dict(r.var_fields)},
    }


@dataclass
class Delivery:
    """One event's delivery: what happened to it, with wall-clock times."""

    event_id: str
    drop_id: str
    code: str
    event_date: str
    data_id: int
    first_sent_at: float | None = None
    delivered_at: float | None = None
    attempts: int = 0
    copies: int = 1
    last_status: int | None = None
    lost: bool = False


@dataclass
class _Job:
    ev: Event
    url: str
    attempt: int = 0
    last_status: int = 0


@dataclass
class WebhookSender:
    """The campaigns' webhook URLs, the delivery queue and its workers, and the log."""

    seed: int = 1
    urls: dict[str, str] = field(default_factory=dict)
    options: WebhookOptions = field(default_factory=WebhookOptions)
    log: dict[str, Delivery] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    _rng: random.Random = field(default_factory=random.Random)
    _queue: asyncio.Queue[_Job] | None = None
    _workers: list[asyncio.Task[None]] = field(default_factory=list)
    _client: httpx.AsyncClient | None = None
    _closing: asyncio.Task[None] | None = None
    _pending: int = 0
    _next_slot: float = 0.0

    def configure(self, urls: dict[str, str], options: WebhookOptions) -> None:
        """Set (replace) the URLs and options; starts the workers on the running loop."""
        self.urls = {str(k): str(v) for k, v in urls.items()}
        self.options = options
        self._rng = random.Random(f"webhooks:{self.seed}")
        self._start()

    def _start(self) -> None:
        for task in self._workers:
            task.cancel()
        loop = asyncio.get_running_loop()
        if self._client is not None:
            self._closing = loop.create_task(self._client.aclose())
        self._pending = 0
        self._queue = asyncio.Queue()
        self._client = httpx.AsyncClient(timeout=self.options.timeout)
        self._workers = [loop.create_task(self._worker())
                         for _ in range(self.options.concurrency)]

    def enqueue(self, events: list[Event]) -> int:
        """Queue the new events of configured campaigns (called as the clock advances);
        returns how many deliveries were queued."""
        if self._queue is None or not self.urls:
            return 0
        jobs: list[_Job] = []
        for ev in events:
            url = self.urls.get(str(ev.drop_id))
            if url is None:
                continue
            entry = self.log[ev.event_id] = Delivery(ev.event_id, str(ev.drop_id),
                                                     ev.code.value, iso(ev.at),
                                                     ev.recipient.data_id)
            if self._rng.random() < self.options.lost_rate:
                entry.lost = True
                self.counts["lost"] += 1
                continue
            jobs.append(_Job(ev, url))
            if self._rng.random() < self.options.duplicate_rate:
                entry.copies += 1
                self.counts["duplicated"] += 1
                jobs.append(_Job(ev, url))
        if self.options.reorder:
            self._rng.shuffle(jobs)
        for job in jobs:
            self._put(job)
        return len(jobs)

    def _put(self, job: _Job) -> None:
        assert self._queue is not None
        self._pending += 1
        self._queue.put_nowait(job)

    async def _worker(self) -> None:
        assert self._queue is not None and self._client is not None
        queue, client = self._queue, self._client
        while True:
            job = await queue.get()
            try:
                await self._send(client, job)
            finally:
                self._pending -= 1

    async def _pace(self) -> None:
        """Wait for this delivery's slot when deliveries are paced (`max_per_second`)."""
        if self.options.max_per_second <= 0:
            return
        loop = asyncio.get_running_loop()
        slot = max(loop.time(), self._next_slot)
        self._next_slot = slot + 1.0 / self.options.max_per_second
        await asyncio.sleep(slot - loop.time())

    async def _send(self, client: httpx.AsyncClient, job: _Job) -> None:
        await self._pace()
        entry = self.log[job.ev.event_id]
        now = time.time()
        entry.first_sent_at = entry.first_sent_at or now
        entry.attempts += 1
        self.counts["attempts"] += 1
        try:
            resp = await client.post(job.url, json=webhook_payload(job.ev, job.attempt,
                                                                   job.last_status))
            status = resp.status_code
        except httpx.HTTPError:
            status = 0
        entry.last_status = status
        self.counts[f"status_{status}"] += 1
        if 200 <= status < 300:
            entry.delivered_at = entry.delivered_at or time.time()
            return
        if job.attempt >= self.options.retry_attempts:
            self.counts["gave_up"] += 1
            return
        self.counts["retried"] += 1
        retry = _Job(job.ev, job.url, job.attempt + 1, status)
        delay = self.options.retry_delay * 2 ** job.attempt
        self._pending += 1  # counted from now, so `idle` stays false until it is re-sent
        asyncio.get_running_loop().call_later(delay, self._requeue, retry)

    def _requeue(self, job: _Job) -> None:
        self._pending -= 1
        self._put(job)

    @property
    def idle(self) -> bool:
        """Nothing queued, in flight or waiting for a retry."""
        return self._pending == 0

    def view(self, with_log: bool = False) -> dict[str, Any]:
        """The admin view: URLs (the keys in them masked), options, counts, and the log."""
        out: dict[str, Any] = {
            "campaigns": sorted(self.urls), "options": asdict(self.options),
            "counts": dict(self.counts), "pending": self._pending, "idle": self.idle,
        }
        if with_log:
            out["log"] = [asdict(d) for d in self.log.values()]
        return out

    async def aclose(self) -> None:
        """Stop the workers and close the HTTP client."""
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None
