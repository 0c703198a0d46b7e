"""Run an ASGI app with uvicorn inside the current event loop, on a given or OS-chosen port.

Used by the daemon for its three servers and by the devnet and tests for theirs. The socket is bound
here, so a port clash fails at start, loudly, and port 0 gives the OS-chosen port before the first
request. With ``ConnectionLimits`` a server bounds what clients can hold: how long a request may take
to arrive, and how many connections may be open.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one client connection may hold, so slow or stalled clients cannot exhaust the server.

    ``request_read_timeout``: seconds from the moment a connection waits for a request (it opened, or
    its previous response was sent) until that request's headers and body have all arrived; after it
    the connection is answered 408 and closed. The time the app then takes to answer is not limited.
    ``max_connections``: open connections; one more is answered 503 and closed at once.
    """

    request_read_timeout: float = 30.0
    max_connections: int = 1000


def _raw_response(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + body


def guarded_protocol(base: type[asyncio.Protocol], limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (h11 or httptools) with ``limits`` enforced per connection.

    uvicorn itself has no deadline for a request's headers or body (its keep-alive timer is cancelled
    by any byte received), and its ``limit_concurrency`` answers 503 only once a request's headers are
    complete, so connections that never finish them pile up. The guard uses what both of uvicorn's
    protocols share: ``connections`` (the server's open connections), ``cycle`` (the request being
    received or answered, with ``more_body`` and ``response_complete``) and ``on_response_complete``.
    """
    parent: Any = base
    too_many = _raw_response("503 Service Unavailable", f"too many connections (limit {limits.max_connections})")
    too_slow = _raw_response("408 Request Timeout",
                             f"request not received within {limits.request_read_timeout:g} seconds")

    class Guarded(parent):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(too_many)
                transport.close()
                return
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on a kept-alive connection gets the same time to arrive

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(limits.request_read_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not cycle.more_body:
                return  # arrived in time and is being answered; the answer's completion re-arms
            if self.transport.is_closing():
                return
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self.transport.write(too_slow)
            self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


class EmbeddedServer:
    """An ASGI app served by uvicorn inside the caller's event loop, on a socket bound here.

    Binding the socket ourselves gives the OS-chosen port (port 0) before the first request. Start and
    stop are uvicorn's `startup()` and a shutdown of our own instead of `serve()`: `serve()` installs
    signal handlers (the embedding process owns SIGINT/SIGTERM) and its shutdown polls in 0.1 s steps,
    which adds up in tests that start and stop many servers.

    Args:
        app: the ASGI app to serve.
        host: the address to bind and to name in :attr:`url` (a wildcard address is named as loopback).
        port: the port to bind; 0 lets the OS choose.
        sock: a socket bound earlier (so its port was known before the app existed), served instead of
            binding ``port``.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0,
                 sock: socket.socket | None = None, limits: ConnectionLimits | None = None) -> None:
        self.app = app
        self.host = host
        self.limits = limits
        self._requested_port = port
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._prebound = sock  # a socket bound earlier (so its port was known before the app existed)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the server (a wildcard bind is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def open_connections(self) -> int:
        """Client connections open right now (0 before start)."""
        return len(self._server.server_state.connections) if self._server is not None else 0

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        sock = self._prebound or bind_socket(self.host, self._requested_port)
        self._prebound = None
        try:
            # log_config=None leaves the embedding process's logging configuration alone.
            config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False)
            config.load()
            if self.limits is not None:
                config.http_protocol_class = guarded_protocol(config.http_protocol_class, self.limits)
            server = uvicorn.Server(config)
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
            await server.on_tick(0)  # sets the default response headers (Date) that serve() would
        except BaseException:
            sock.close()
            raise
        self._sock, self._server = sock, server
        self._port = sock.getsockname()[1]

    async def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, let requests in flight finish for up to `grace` seconds, then cut them off."""
        server, sock = self._server, self._sock
        if server is None:
            return
        self._server = self._sock = None
        for listener in server.servers:
            listener.close()
        state = server.server_state
        for connection in list(state.connections):
            connection.shutdown()  # idle keep-alive connections close now, busy ones after their response
        deadline = time.monotonic() + grace
        # uvicorn exposes no event for "all connections closed"; polling its sets is all there is.
        while (state.connections or state.tasks) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        for task in list(state.tasks):
            task.cancel()
        for connection in list(state.connections):
            connection.transport.close()
        for listener in server.servers:
            await listener.wait_closed()
        if sock is not None:
            sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: accepted sockets copy it, and asyncio sets TCP_NODELAY only on sockets whose
    # proto is IPPROTO_TCP. With proto 0, Nagle holds each response body behind its headers until the
    # client's delayed ACK, ~40 ms per request on loopback.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def start_server(app: ASGIApp, host: str = "127.0.0.1", port: int = 0,
                       limits: ConnectionLimits | None = None) -> EmbeddedServer:
    server = EmbeddedServer(app, host=host, port=port, limits=limits)
    await server.start()
    return server
