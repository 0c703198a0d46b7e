"""Run an ASGI app with uvicorn inside the current event loop, on a given or OS-chosen port.

Used by the daemon for its three servers and by the devnet and tests for theirs; the bound port is
read back from the socket, so port 0 works everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn

from dapi.logs import get_logger

log = get_logger(__name__)


class RunningServer:
    """An uvicorn server serving on a socket this object bound; ``stop()`` shuts it down."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self._server = server
        self._sock = sock
        self._task = task
        self.host, self.port = sock.getsockname()[:2]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        finally:
            self._sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def start_server(app: Any, host: str = "127.0.0.1", port: int = 0, *, name: str = "http",
                       **uvicorn_options: Any) -> RunningServer:
    """Bind first (so a port clash fails here, loudly), then serve in an owned task."""
    sock = bind_socket(host, port)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", **uvicorn_options)
    server = uvicorn.Server(config)

    async def serve() -> None:
        try:
            # _serve, not serve: serve() captures SIGINT/SIGTERM, and the process owner handles those.
            await server._serve(sockets=[sock])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("server crashed", server=name)
            raise

    task = asyncio.create_task(serve(), name=f"serve-{name}")
    while not server.started:
        if task.done():
            task.result()  # re-raises the start-up failure
            raise RuntimeError(f"{name} server exited before it started")
        await asyncio.sleep(0.005)
    return RunningServer(server, sock, task)
