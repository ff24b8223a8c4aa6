"""Injected faults: what a flaky network and a flaky HighLevel look like to an httpx client.

SPEC format (the `--faults` option, or `{"spec": "..."}` / the same keys as JSON to
`POST /_sandbox/faults`): comma-separated `key=value` pairs, all optional::

    error=0.1,slow=0.05,reset=0.02,drop=0.02,burst429=0.01,slow_seconds=5,scope=highlevel

Rates are probabilities per request (0..1, their sum at most 1); one uniform draw per request
picks at most one fault, in this order:

- ``error``     answer 500, 502 or 503 (picked by the same draw) without processing.
- ``slow``      process the request, then hold the answer ``slow_seconds`` (× time scale)
                before sending it: the client's read timeout fires, yet the write has landed.
- ``reset``     cut the connection before processing: nothing lands, the client gets
                ``httpx.RemoteProtocolError`` / ``httpx.ReadError``.
- ``drop``      commit-then-drop: process the request (the note IS stored), then cut the
                connection before any byte of the answer. Identical to ``reset`` from the
                client's side; that ambiguity is the point (it is what duplicates notes).
- ``burst429``  a spurious 429 with the rate-limit headers, as HighLevel's edge sometimes sends.

Other keys: ``slow_seconds`` (default 5), ``scope`` = ``highlevel`` (default) | ``postalytics``
| ``all``, and ``codes`` = ``500/502/503`` (the error statuses to pick from, ``/``-separated).
An empty SPEC or ``none`` turns faults off. Draws come from a `random.Random` seeded with
the sandbox seed, so a given sequence of requests meets the same faults every run.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.routing import Match, Route

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RAW_SEND = "mailsync.sandbox.raw_send"
"""Scope key under which the outermost wrapper keeps the server's own `send`."""

FAULT_KINDS = ("error", "slow", "reset", "drop", "burst429")
SCOPES = ("highlevel", "postalytics", "all")


class FaultSpecError(ValueError):
    """A SPEC string or JSON body that cannot be understood."""


@dataclass(frozen=True)
class FaultSpec:
    """The fault rates in force; all zero means no faults."""

    error: float = 0.0
    slow: float = 0.0
    reset: float = 0.0
    drop: float = 0.0
    burst429: float = 0.0
    slow_seconds: float = 5.0
    scope: str = "highlevel"
    codes: tuple[int, ...] = (500, 502, 503)

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            rate = getattr(self, kind)
            if not 0.0 <= rate <= 1.0:
                raise FaultSpecError(f"{kind}={rate}: a rate must be between 0 and 1")
        if sum(getattr(self, k) for k in FAULT_KINDS) > 1.0 + 1e-9:
            raise FaultSpecError("the fault rates add up to more than 1")
        if self.slow_seconds < 0:
            raise FaultSpecError("slow_seconds must not be negative")
        if self.scope not in SCOPES:
            raise FaultSpecError(f"scope={self.scope}: expected one of {', '.join(SCOPES)}")
        if not self.codes or any(c < 500 or c > 599 for c in self.codes):
            raise FaultSpecError("codes must be 5xx statuses")

    @property
    def active(self) -> bool:
        """Whether any fault can happen."""
        return any(getattr(self, k) > 0 for k in FAULT_KINDS)

    def applies_to(self, api: str) -> bool:
        """Whether requests to `api` ("highlevel" or "postalytics") may meet faults."""
        return self.scope == "all" or self.scope == api

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON (what `GET /_sandbox/faults` returns)."""
        out = asdict(self)
        out["codes"] = list(self.codes)
        out["spec"] = self.to_string()
        return out

    def to_string(self) -> str:
        """The SPEC string form, round-trippable through `parse`."""
        parts = [f"{k}={getattr(self, k):g}" for k in FAULT_KINDS if getattr(self, k)]
        parts.append(f"slow_seconds={self.slow_seconds:g}")
        parts.append(f"scope={self.scope}")
        if self.codes != (500, 502, 503):
            parts.append("codes=" + "/".join(str(c) for c in self.codes))
        return ",".join(parts)

    @classmethod
    def parse(cls, spec: str | None) -> FaultSpec:
        """Parse the SPEC string form (see the module docstring)."""
        if spec is None or spec.strip().lower() in ("", "none", "off"):
            return cls()
        values: dict[str, Any] = {}
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, raw = part.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep:
                raise FaultSpecError(f"{part!r}: expected key=value")
            values[key] = raw
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> FaultSpec:
        """Build from JSON-ish values (numbers or strings); unknown keys are an error."""
        if "spec" in data:
            rest = {k: v for k, v in data.items() if k != "spec"}
            base = cls.parse(str(data["spec"]))
            return cls.from_mapping({**base.to_json_fields(), **rest}) if rest else base
        known = {*FAULT_KINDS, "slow_seconds", "scope", "codes"}
        unknown = set(data) - known
        if unknown:
            raise FaultSpecError(f"unknown fault key(s): {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        try:
            for key in (*FAULT_KINDS, "slow_seconds"):
                if key in data:
                    kwargs[key] = float(data[key])
            if "scope" in data:
                kwargs["scope"] = str(data["scope"]).strip().lower()
            if "codes" in data:
                codes = data["codes"]
                if isinstance(codes, str):
                    codes = [c for c in codes.replace("/", " ").split() if c]
                kwargs["codes"] = tuple(int(c) for c in codes)
        except (TypeError, ValueError) as exc:
            raise FaultSpecError(f"bad fault value: {exc}") from None
        return cls(**kwargs)

    def to_json_fields(self) -> dict[str, Any]:
        """The dataclass fields only (no derived `spec`)."""
        out = asdict(self)
        out["codes"] = list(self.codes)
        return out


@dataclass
class Fault:
    """The fault picked for one request (kind None: none)."""

    kind: str | None = None
    status: int = 0  # for "error"


@dataclass
class FaultPlan:
    """The current spec plus the seeded draw stream."""

    seed: int = 0
    spec: FaultSpec = field(default_factory=FaultSpec)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"faults:{self.seed}")

    def set(self, spec: FaultSpec) -> None:
        """Replace the spec and restart the draw stream, so a test sees a known sequence."""
        self.spec = spec
        self._rng = random.Random(f"faults:{self.seed}")

    def draw(self, api: str) -> Fault:
        """Pick the fault (if any) for the next request to `api`."""
        spec = self.spec
        if not spec.active or not spec.applies_to(api):
            return Fault()
        u = self._rng.random()
        edge = 0.0
        for kind in FAULT_KINDS:
            rate = getattr(spec, kind)
            if u < edge + rate:
                status = 0
                if kind == "error":
                    # Reuse the position inside the band so the draw stays one number.
                    band = (u - edge) / rate
                    status = spec.codes[min(len(spec.codes) - 1, int(band * len(spec.codes)))]
                return Fault(kind, status)
            edge += rate
        return Fault()


class ConnectionCut(Exception):
    """Raised after a deliberate connection cut; the outermost wrapper swallows it."""


async def send_json(send: Send, status: int, body: Any,
                    headers: dict[str, str] | None = None) -> None:
    """Send a complete JSON response through raw ASGI."""
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


async def cut_connection(scope: Scope, send: Send) -> None:
    """Close the client's connection with no answer at all, then raise ConnectionCut.

    Under uvicorn the server's `send` is a bound method of the request cycle that holds the
    asyncio transport: aborting it drops the TCP connection before any byte of a response, so
    httpx reports `RemoteProtocolError("Server disconnected without sending a response")` or
    a `ReadError`. Elsewhere (another server), fall back to starting a response that promises
    a body and never sending it, which the client sees as an incomplete message.
    """
    raw = scope.get(RAW_SEND, send)
    transport = getattr(getattr(raw, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()
        # Let connection_lost run so uvicorn marks the cycle disconnected and stays quiet.
        for _ in range(3):
            await asyncio.sleep(0)
        raise ConnectionCut()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"4096")]})
    await send({"type": "http.response.body", "body": b'{"partial":', "more_body": True})
    raise ConnectionCut()


async def run_with_fault(fault: Fault, spec: FaultSpec, time_scale: float, scope: Scope,
                         receive: Receive, send: Send, app: ASGIApp,
                         error_body: Callable[[int], Any],
                         headers: dict[str, str] | None = None) -> None:
    """Serve one request through `app`, with the picked fault applied."""
    if fault.kind is None:
        await app(scope, receive, send)
    elif fault.kind == "error":
        await send_json(send, fault.status, error_body(fault.status), headers)
    elif fault.kind == "burst429":
        await send_json(send, 429, error_body(429), headers)
    elif fault.kind == "reset":
        await cut_connection(scope, send)
    elif fault.kind == "drop":
        async def swallow(message: Message) -> None:
            return None

        await app(scope, receive, swallow)  # the write lands...
        await cut_connection(scope, send)  # ...and the answer never leaves
    elif fault.kind == "slow":
        delay = spec.slow_seconds * time_scale

        async def late(message: Message) -> None:
            if message["type"] == "http.response.start":
                await asyncio.sleep(delay)
            await send(message)

        await app(scope, receive, late)
    else:  # pragma: no cover - FAULT_KINDS is closed
        raise ValueError(fault.kind)


def route_of(router: Any, scope: Scope) -> str:
    """`METHOD /template` of the route a request will hit, for per-route stats."""
    for route in router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL and isinstance(route, Route):
            return f"{scope['method']} {route.path}"
    return f"{scope['method']} (unknown)"
