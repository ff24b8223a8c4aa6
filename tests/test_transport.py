"""The clients' connections (`SlotTransport`), against a real HTTP/1.1 server on loopback:
one request per connection at a time, connections kept and reused, callers beyond the slots
wait their turn (or time out), and a slot is never lost to an error or a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from mailsync.clients.http import ApiClient, CallStatus
from mailsync.clients.transport import SlotTransport


@dataclass
class Server:
    """Answers `GET /<ms>` after that many milliseconds; notes what each connection did."""

    url: str = ""
    connections: int = 0
    busy: set[int] = field(default_factory=set)
    overlapped: int = 0
    """Requests that arrived on a connection still answering another."""
    most_at_once: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        me = self.connections
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                if me in self.busy:
                    self.overlapped += 1
                self.busy.add(me)
                self.most_at_once = max(self.most_at_once, len(self.busy))
                path = head.split(b" ", 2)[1].decode()
                await asyncio.sleep(int(path.strip("/") or 0) / 1000)
                self.busy.discard(me)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Server]:
    server = Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    async with listener:
        yield server


def client(server: Server, slots: int, pool_timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, transport=SlotTransport(slots),
                             timeout=httpx.Timeout(5.0, pool=pool_timeout))


def test_each_connection_carries_one_request_at_a_time_and_is_kept() -> None:
    async def main() -> Server:
        async with serving() as server, client(server, 4) as http:
            answers = await asyncio.gather(*(http.get(f"/{i % 3}") for i in range(60)))
        assert all(a.status_code == 200 for a in answers)
        return server

    server = asyncio.run(main())
    assert server.overlapped == 0
    assert server.most_at_once == 4  # 60 callers, 4 connections, all of them used
    assert server.connections == 4  # kept open and reused, not one per request


def test_a_caller_beyond_the_slots_times_out_waiting_and_loses_no_slot() -> None:
    async def main() -> list[int]:
        async with serving() as server, client(server, 1, pool_timeout=0.05) as http:
            slow = asyncio.create_task(http.get("/300"))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await http.get("/0")
            first = await slow
            again = await http.get("/0")
            return [first.status_code, again.status_code]

    assert asyncio.run(main()) == [200, 200]


def test_a_cancelled_waiter_and_a_failed_send_give_their_slot_back() -> None:
    async def main() -> int:
        async with serving() as server, client(server, 1) as http:
            slow = asyncio.create_task(http.get("/200"))
            await asyncio.sleep(0.05)
            waiting = asyncio.create_task(http.get("/0"))
            await asyncio.sleep(0.01)
            waiting.cancel()
            await slow
            with pytest.raises(httpx.ConnectError):
                await http.get("http://127.0.0.1:9/")  # nothing listens on the discard port
            return (await asyncio.wait_for(http.get("/0"), 2)).status_code

    assert asyncio.run(main()) == 200


def test_a_slot_handed_over_as_its_waiter_is_cancelled_passes_on() -> None:
    # The race in one loop turn: the slot is handed to a waiter that is cancelled before it
    # resumes. Driven through the transport's own steps, since a server cannot time it.
    transport = SlotTransport(1)
    request = httpx.Request("GET", "http://127.0.0.1/")

    async def main() -> bool:
        slot = await transport._take(request)
        waiter = asyncio.create_task(transport._take(request))
        await asyncio.sleep(0)
        transport._give(slot)
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        return await asyncio.wait_for(transport._take(request), 1) is slot

    assert asyncio.run(main())


def test_api_clients_send_on_slots_unless_the_environment_names_a_proxy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> tuple[bool, CallStatus]:
        async with serving() as server:
            api = ApiClient(server.url)
            outcome = await api.send("GET", "/0", idempotent=True)
            await api.aclose()
            return isinstance(api.http._transport, SlotTransport), outcome.status

    assert asyncio.run(main()) == (True, CallStatus.ok)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    proxied = ApiClient("https://api.example.com")
    assert not isinstance(proxied.http._transport, SlotTransport)
