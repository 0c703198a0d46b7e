"""Slow and stalled clients: a request must arrive within the configured time, and connections are capped.

Raw sockets on loopback against a real embedded server, a few dozen at most, with a short configured
deadline. No assertion is about speed: a stalled connection must end closed by the server, and a
request that arrived in time must be answered however long its handler takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from waiting import wait_for

from dapi.runtime.serving import ConnectionLimits, EmbeddedServer, start_server

DEADLINE = 0.5
EOF_WAIT = 30.0  # generous: only a server that never closes the connection fails


class App:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.app = Starlette(routes=[Route("/", self.hello), Route("/echo", self.echo, methods=["POST"]),
                                     Route("/slow", self.slow)])

    async def hello(self, _: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    async def echo(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    async def slow(self, _: Request) -> PlainTextResponse:
        self.slow_started.set()
        await self.release.wait()
        return PlainTextResponse("finally")


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(server: EmbeddedServer, data: bytes = b"") -> Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def until_closed(conn: Conn) -> bytes:
    """Everything the server sent, once it has closed the connection."""
    reader, writer = conn
    try:
        return await asyncio.wait_for(reader.read(), EOF_WAIT)
    finally:
        writer.close()


GET = b"GET / HTTP/1.1\r\nhost: t\r\n\r\n"


@pytest.fixture
async def app() -> App:
    return App()


@pytest.fixture
async def guarded(app: App) -> AsyncIterator[EmbeddedServer]:
    server = await start_server(app.app, limits=ConnectionLimits(request_read_timeout=DEADLINE, max_connections=100))
    yield server
    app.release.set()
    await server.stop()


async def test_requests_that_do_not_arrive_in_time_are_closed(guarded: EmbeddedServer, app: App) -> None:
    # A request that arrives whole and whose handler then takes longer than the deadline.
    busy = await connect(guarded, b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
    await app.slow_started.wait()
    stalled = {
        "nothing sent": [await connect(guarded) for _ in range(4)],
        "headers unfinished": [await connect(guarded, b"GET / HTTP/1.1\r\nhost: t\r\nx-a: 1") for _ in range(4)],
        "body unfinished": [await connect(guarded, b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n"
                                                   + b"x" * 10) for _ in range(4)],
        "second request unfinished": [await connect(guarded, GET + b"GET / HTTP/1.1\r\nho") for _ in range(4)],
    }
    sent = {kind: await asyncio.gather(*(until_closed(c) for c in conns)) for kind, conns in stalled.items()}
    for kind, answers in sent.items():
        for answer in answers:
            assert answer.endswith(b'{"error": "request not received within 0.5 seconds"}'), (kind, answer)
            assert b"HTTP/1.1 408 Request Timeout" in answer, kind
    assert all(a.startswith(b"HTTP/1.1 200 OK") and a.count(b"HTTP/1.1") == 2
               for a in sent["second request unfinished"])
    # Every stalled connection has outlived the deadline; the busy one is still answered, not cut off.
    app.release.set()
    reader, writer = busy
    assert (await asyncio.wait_for(reader.readuntil(b"finally"), EOF_WAIT)).startswith(b"HTTP/1.1 200 OK")
    writer.close()
    fresh = await connect(guarded, b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc")
    answer = await until_closed(fresh)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\n3")


async def test_connections_beyond_the_limit_are_refused_until_some_close(app: App) -> None:
    server = await start_server(app.app, limits=ConnectionLimits(request_read_timeout=60, max_connections=10))
    try:
        held = [await connect(server) for _ in range(10)]
        await wait_for(lambda: server.open_connections == 10, what="ten connections open")
        extra = [await connect(server) for _ in range(10)]
        refused = await asyncio.gather(*(until_closed(c) for c in extra))
        assert all(r.startswith(b"HTTP/1.1 503 Service Unavailable") and r.endswith(b"(limit 10)\"}")
                   for r in refused)
        # The held ones still work: a request on one of them is answered.
        reader, writer = held[0]
        writer.write(GET)
        assert (await asyncio.wait_for(reader.readuntil(b"hello"), EOF_WAIT)).startswith(b"HTTP/1.1 200 OK")
        for _, writer in held[:5]:
            writer.close()
        await wait_for(lambda: server.open_connections == 5, what="five connections closed")
        answer = await until_closed(await connect(server, GET.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")))
        assert answer.startswith(b"HTTP/1.1 200 OK")
        for _, writer in held[5:]:
            writer.close()
    finally:
        await server.stop()


async def test_without_limits_a_stalled_connection_is_not_closed_by_the_server(app: App) -> None:
    # What the limits are for: an unguarded server holds a connection that never finishes its headers.
    server = await start_server(app.app)
    try:
        reader, writer = await connect(server, b"GET / HTTP/1.1\r\nhost: t\r\n")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(), DEADLINE * 4)
        writer.close()
    finally:
        await server.stop()
