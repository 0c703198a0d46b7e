"""Fault injection and call recording for the simulated ML nodes (raw ASGI, in front of the FastAPI app).

Per node, optionally limited to a path prefix and to the next N calls: latency before answering, a
fixed HTTP status, a timeout (the request is held until the client gives up), and a refused
connection. A refused connection is emulated by closing the TCP connection without writing a response:
every node shares the server's port, so nothing can refuse the connect itself, but an HTTP client sees
the same thing a down node gives it, a transport error and no status ("server disconnected without
sending a response" in httpx).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from dapi.devnet.mlnode.node import NODES_PREFIX, RecordedCall, SimNode
from dapi.devnet.mlnode.vllm import BackendGone
from dapi.logs import get_logger

if TYPE_CHECKING:
    from dapi.devnet.mlnode.server import SimMLNodeServer

log = get_logger(__name__)

_NODE_PATH_RE = re.compile(rf"^{NODES_PREFIX}/([^/]+)(/.*)?$")

ASGIScope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]


class FaultSpec(BaseModel):
    """A fault to inject into a node's answers (also the body of `PUT /sim/nodes/{name}/fault`).

    latency: seconds to wait before answering (alone, or before the other fault);
    status: answer every call with this HTTP status and `{"detail": "simulated fault"}`;
    timeout: never answer; the request is held until the client gives up or the server stops;
    refuse: close the connection without a response (see the module docstring);
    path_prefix: only calls whose path below the node segment starts with this (e.g. "/health");
    count: only the next `count` matching calls, then the fault clears itself.
    """

    latency: float = Field(default=0.0, ge=0.0)
    status: int | None = Field(default=None, ge=100, le=599)
    timeout: bool = False
    refuse: bool = False
    path_prefix: str | None = None
    count: int | None = Field(default=None, ge=1)

    def label(self) -> str:
        """A short name of the fault for recorded calls ("status:500,latency:0.5"); empty if none."""
        parts = []
        if self.refuse:
            parts.append("refuse")
        elif self.timeout:
            parts.append("timeout")
        elif self.status is not None:
            parts.append(f"status:{self.status}")
        if self.latency:
            parts.append(f"latency:{self.latency:g}")
        return ",".join(parts)



class FaultsAndRecording:
    """Records each call to a node and applies its fault before the routes see the request.

    Raw ASGI rather than FastAPI middleware because two of the faults are not responses at all:
    holding a request forever and dropping the connection. Requests outside `/nodes/<name>`, or for
    unknown nodes, pass through untouched.

    Args:
        server: finds a request's node, and tells when it is closing (held requests end then).
        app: the routes (`app.build_app`).
    """

    def __init__(self, server: SimMLNodeServer, app: ASGIApp) -> None:
        self._server = server
        self._app = app

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        match = _NODE_PATH_RE.match(scope["path"])
        node = self._server.find_node(match.group(1)) if match else None
        if match is None or node is None:
            await self._app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away before sending its body
        path = match.group(2) or "/"
        fault = _take_fault(node, path)
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type")
        node.calls.append(
            RecordedCall(
                method=scope["method"],
                path=path,
                json=json_or_none(body),
                time=time.time(),
                content_type=content_type.decode("latin-1") if content_type is not None else None,
                fault=fault.label() if fault else None,
            )
        )
        if fault is not None:
            if fault.latency and not await self._server.sleep_unless_closing(fault.latency):
                await _drop_connection(send, receive)
                return
            if fault.refuse:
                await _drop_connection(send, receive)
                return
            if fault.timeout:
                await self._hold(send, receive)
                return
            if fault.status is not None:
                await _send_json(send, fault.status, {"detail": "simulated fault"})
                return
        try:
            await self._app(scope, _replay(body, receive), send)
        except* BackendGone:
            await _drop_connection(send, receive)  # a vLLM that ends mid-stream leaves a cut connection

    async def _hold(self, send: ASGISend, receive: ASGIReceive) -> None:
        disconnected = asyncio.ensure_future(_wait_disconnect(receive))
        closing = asyncio.ensure_future(self._server.wait_closing())
        try:
            await asyncio.wait({disconnected, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnected.cancel()
            closing.cancel()
        if closing.done() and not closing.cancelled():
            await _drop_connection(send, receive)


def _take_fault(node: SimNode, path: str) -> FaultSpec | None:
    fault = node.fault
    if fault is None or (fault.path_prefix is not None and not path.startswith(fault.path_prefix)):
        return None
    if fault.count is not None:
        remaining = fault.count - 1
        node.fault = fault.model_copy(update={"count": remaining}) if remaining > 0 else None
    return fault


async def _read_body(receive: ASGIReceive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: ASGIReceive) -> ASGIReceive:
    sent = False

    async def replay() -> ASGIMessage:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body, only the disconnect is left to hear

    return replay


async def _wait_disconnect(receive: ASGIReceive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_json(send: ASGISend, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _drop_connection(send: ASGISend, receive: ASGIReceive) -> None:
    # ASGI has no "close without answering"; uvicorn's send is a method of its per-request cycle,
    # which holds the socket's transport. Closing it and then waiting for the disconnect uvicorn
    # reports back keeps uvicorn from writing its own 500 after we return.
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    close = getattr(transport, "close", None)
    if not callable(close):
        log.warning("sim ML node: cannot reach the socket to drop the connection; answering 503 instead")
        await _send_json(send, 503, {"detail": "simulated refused connection"})
        return
    close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_wait_disconnect(receive), timeout=2.0)


def json_or_none(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None

