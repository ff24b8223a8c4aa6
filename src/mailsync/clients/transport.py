"""The connections a client sends on: one per request in flight, handed out from a free list.

httpx's pool (httpcore's `AsyncConnectionPool`) hands each request it takes in the first idle
connection, and a connection stays idle until its request runs, one event-loop turn later.
Requests taken in during that turn all get the same connection, all but one find it busy
and go round again, and each round scans every pooled connection (checking each idle one's
socket). With eight calls in flight per location that came to two or three extra rounds per
request, and much of the HTTP client's CPU in a sync (bench/RESULTS.md, section 3).

`SlotTransport` keeps one single-connection transport per call in flight instead: a request
takes a free one, or waits its turn for one, and gives it back when its response is closed,
so no two requests ever share a connection and no round is repeated.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

__all__ = ["SlotTransport", "env_proxies"]


def env_proxies() -> bool:
    """Whether the environment names an HTTP(S) proxy: httpx honours those only with its own
    pool, so a client keeps that pool then."""
    found = urllib.request.getproxies()
    return any(found.get(k) for k in ("http", "https", "all"))


class _Releasing(httpx.AsyncByteStream):
    """A response body that gives its connection back once it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class SlotTransport(httpx.AsyncBaseTransport):
    """`slots` connections, each carrying one request at a time; more callers wait in turn
    (up to the request's pool timeout)."""

    def __init__(self, slots: int, **transport_options: Any) -> None:
        if slots < 1:
            raise ValueError("a transport needs at least one slot")
        one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._all = [httpx.AsyncHTTPTransport(limits=one, **transport_options)
                     for _ in range(slots)]
        # Last in, first out: the connection used last is the one most likely still open.
        self._free = list(reversed(self._all))
        self._waiting: deque[asyncio.Future[httpx.AsyncHTTPTransport]] = deque()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send on a free connection; it is given back when the response is closed."""
        slot = await self._take(request)
        try:
            response = await slot.handle_async_request(request)
        except BaseException:
            self._give(slot)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Releasing(response.stream, lambda: self._give(slot))
        return response

    async def _take(self, request: httpx.Request) -> httpx.AsyncHTTPTransport:
        if self._free:
            return self._free.pop()
        waiter: asyncio.Future[httpx.AsyncHTTPTransport] = (
            asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        taken = False
        try:
            async with asyncio.timeout(request.extensions.get("timeout", {}).get("pool")):
                slot = await waiter
            taken = True
            return slot
        except TimeoutError:
            raise httpx.PoolTimeout("no connection came free in time", request=request) from None
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            if not waiter.done():
                waiter.cancel()
            elif not taken and not waiter.cancelled():
                self._give(waiter.result())  # handed one just as it gave up: pass it on

    def _give(self, slot: httpx.AsyncHTTPTransport) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)

    async def aclose(self) -> None:
        """Close every connection."""
        for slot in self._all:
            await slot.aclose()
