"""Virtual time for one event loop, shared by the pacer and client tests."""

from __future__ import annotations

import asyncio
import heapq


class VirtualTime:
    """Virtual time for one event loop: a sleeper wakes when every other task is blocked
    and its deadline is the earliest, so concurrent sleeps overlap as they would for real.
    Also used by the client tests."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.start = self.now = start
        self.sleeps: list[float] = []
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._armed = False

    def clock(self) -> float:
        return self.now

    @property
    def elapsed(self) -> float:
        return self.now - self.start

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (self.now + max(seconds, 0.0), self._seq, future))
        self._seq += 1
        self._arm(loop)
        await future

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._armed:
            self._armed = True
            loop.call_soon(self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop._ready:  # type: ignore[attr-defined]  # others still run at this instant
            loop.call_soon(self._tick, loop)
            return
        self._armed = False
        while self._heap:
            when, _, future = heapq.heappop(self._heap)
            if not future.done():
                self.now = max(self.now, when)
                future.set_result(None)
                break
        if self._heap:
            self._arm(loop)
