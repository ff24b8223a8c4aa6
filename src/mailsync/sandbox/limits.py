"""Server-side rate windows: HighLevel's fixed windows with headers, Postalytics' per-second cap.

Every window length is multiplied by the sandbox's time scale, so `time_scale=0.01` gives
"100 requests per 0.1 s" under exactly the same rules. Time comes from an injectable clock
(monotonic seconds) so the windows can be tested without sleeping.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], float]

HL_WINDOW_LIMIT = 100
HL_WINDOW_SECONDS = 10.0
HL_DAILY_LIMIT = 200_000
DAY_SECONDS = 86_400.0
PL_PER_SECOND = 3


@dataclass
class Verdict:
    """The outcome of one request against a location's windows."""

    allowed: bool
    headers: dict[str, str]
    retry_after: float  # seconds until the blocking window resets (0 when allowed)
    reason: str = ""  # "window" or "daily" when refused


@dataclass
class _Bucket:
    window_start: float = -math.inf
    window_used: int = 0
    day_start: float = -math.inf
    day_used: int = 0


@dataclass
class HighLevelLimits:
    """Per-location fixed windows: `limit` per `window` seconds and `daily` per day.

    A fixed window (not a sliding log) because HighLevel's headers describe one: a maximum,
    what remains, and the interval length. Refused requests do not use up the window.
    """

    time_scale: float = 1.0
    limit: int = HL_WINDOW_LIMIT
    window_seconds: float = HL_WINDOW_SECONDS
    daily: int = HL_DAILY_LIMIT
    clock: Clock = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    @property
    def window(self) -> float:
        """The scaled window length in seconds."""
        return self.window_seconds * self.time_scale

    @property
    def day(self) -> float:
        """The scaled day length in seconds."""
        return DAY_SECONDS * self.time_scale

    def _roll(self, key: str) -> _Bucket:
        now = self.clock()
        b = self._buckets.setdefault(key, _Bucket())
        if now - b.window_start >= self.window:
            b.window_start, b.window_used = now, 0
        if now - b.day_start >= self.day:
            b.day_start, b.day_used = now, 0
        return b

    def _headers(self, b: _Bucket) -> dict[str, str]:
        return {
            "X-RateLimit-Max": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - b.window_used)),
            "X-RateLimit-Interval-Milliseconds": str(max(1, round(self.window * 1000))),
            "X-RateLimit-Limit-Daily": str(self.daily),
            "X-RateLimit-Daily-Remaining": str(max(0, self.daily - b.day_used)),
        }

    def take(self, key: str) -> Verdict:
        """Count one request for `key` (a location id) if both windows allow it."""
        b = self._roll(key)
        now = self.clock()
        if b.day_used >= self.daily:
            return Verdict(False, self._headers(b), b.day_start + self.day - now, "daily")
        if b.window_used >= self.limit:
            return Verdict(False, self._headers(b), b.window_start + self.window - now, "window")
        b.window_used += 1
        b.day_used += 1
        return Verdict(True, self._headers(b), 0.0)

    def peek(self, key: str) -> dict[str, str]:
        """The headers for `key` without counting a request (for 401s and the token route)."""
        return self._headers(self._roll(key))

    def set_daily_remaining(self, key: str, remaining: int) -> None:
        """Pretend the day is partly spent, so quota exhaustion can be tested quickly."""
        b = self._roll(key)
        b.day_used = max(0, self.daily - remaining)

    def reset(self) -> None:
        """Forget every window (fresh day, fresh interval)."""
        self._buckets.clear()


@dataclass
class PostalyticsLimits:
    """Sliding one-second window per API key: at most `per_second` requests in any second.

    Sliding rather than fixed, so a client cannot burst 6 requests across a window edge:
    "3 requests/s" then holds for any one-second span, which also keeps 180/min.
    """

    time_scale: float = 1.0
    per_second: int = PL_PER_SECOND
    clock: Clock = time.monotonic
    _seen: dict[str, deque[float]] = field(default_factory=dict)

    @property
    def window(self) -> float:
        """The scaled window length in seconds."""
        return 1.0 * self.time_scale

    def take(self, key: str) -> tuple[bool, float]:
        """Count one request; return (allowed, seconds until a slot frees when refused)."""
        now = self.clock()
        q = self._seen.setdefault(key, deque())
        while q and now - q[0] >= self.window:
            q.popleft()
        if len(q) >= self.per_second:
            return False, q[0] + self.window - now
        q.append(now)
        return True, 0.0

    def reset(self) -> None:
        """Forget every window."""
        self._seen.clear()


def _counter() -> dict[str, Any]:
    return {"requests": 0, "rate_limited": 0, "faults": {}, "statuses": {}}


@dataclass
class Stats:
    """Request counters per API, per location (or API key) and per route, for `/_sandbox/stats`.

    `rate_limited` counts real limit refusals; spurious 429s are counted as the `burst429`
    fault, so a test can tell pacing failures from injected noise.
    """

    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        self.data = {
            api: {"total": _counter(), "by_location": {}, "by_route": {}}
            for api in ("highlevel", "postalytics")
        }
        self.data["writes"] = {"notes_created": 0, "tags_added": 0, "tags_removed": 0,
                               "contacts_created": 0, "contacts_updated": 0}

    def _targets(self, api: str, who: str, route: str) -> list[dict[str, Any]]:
        d = self.data[api]
        return [d["total"], d["by_location"].setdefault(who, _counter()),
                d["by_route"].setdefault(route, _counter())]

    def request(self, api: str, who: str, route: str) -> None:
        """Count one request."""
        for c in self._targets(api, who, route):
            c["requests"] += 1

    def limited(self, api: str, who: str, route: str) -> None:
        """Count one real rate-limit (or daily quota) refusal."""
        for c in self._targets(api, who, route):
            c["rate_limited"] += 1

    def fault(self, api: str, who: str, route: str, kind: str) -> None:
        """Count one injected fault."""
        for c in self._targets(api, who, route):
            c["faults"][kind] = c["faults"].get(kind, 0) + 1

    def status(self, api: str, who: str, route: str, status: int) -> None:
        """Count one answer by status code."""
        for c in self._targets(api, who, route):
            c["statuses"][str(status)] = c["statuses"].get(str(status), 0) + 1

    def write(self, what: str, n: int = 1) -> None:
        """Count writes that landed in the HighLevel store."""
        self.data["writes"][what] = self.data["writes"].get(what, 0) + n
