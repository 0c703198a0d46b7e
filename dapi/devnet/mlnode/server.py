"""The server of the simulated ML nodes: one uvicorn server on loopback hosting many nodes.

A node named `n1` lives under `/nodes/n1`; that is both its poc_segment and its inference_segment, so the
daemon's node entry is `{host: 127.0.0.1, poc_port: P, poc_segment: /nodes/n1, inference_port: P,
inference_segment: /nodes/n1}`. The server owns the nodes, the HTTP client their batch callbacks use,
and the ASGI stack in front of them (fault injection and recording, then the routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable

import httpx

from dapi.devnet.mlnode.app import build_app
from dapi.devnet.mlnode.capacity import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_TOKENS_PER_SECOND,
    NodeCapacity,
)
from dapi.devnet.mlnode.faults import ASGIApp, FaultsAndRecording, FaultSpec
from dapi.devnet.mlnode.node import DEFAULT_BATCH_INTERVAL, NODES_PREFIX, RecordedCall, SimNode
from dapi.runtime.serving import EmbeddedServer
from dapi.runtime.tasks import TaskOwner
from dapi.runtime.tls import default_ssl_context

_NODE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class SimMLNodeServer:
    """Many simulated ML nodes behind one uvicorn server on `host` (port 0: the OS picks one).

    `async with SimMLNodeServer(batch_interval=0.05) as srv:` starts it; `srv.url` is its base URL and
    `srv.add_node("n1")` a node whose poc and inference base URL is `srv.node_url("n1")`. Nodes can be
    added before or after the start; faults are set with `set_fault` (or `PUT /sim/nodes/{name}/fault`).

    Args:
        host: the address to bind; a wildcard bind is reached on loopback (see `url`).
        port: the port to bind; 0 lets the OS choose one (read it from `port` once started).
        batch_interval: seconds between two batch POSTs of a node (the real Sender's period is 5 s).
        nonces_per_batch: nonces a generating node tries per interval (the ones below r_target are sent).
        load_delay: default seconds an inference/up takes, for nodes added without their own.
        callback_timeout: timeout in seconds of the batch POSTs to the daemon's callback URLs.
        max_concurrent: default requests a node serves at once (`capacity.NodeCapacity`).
        tokens_per_second: default token rate of a node; a node's chain throughput in tokens per block
            becomes a rate with `SimNode.set_throughput(tokens_per_block, block_time)`.
        queue_timeout: seconds a request beyond `max_concurrent` may wait for a slot before its 503.
        max_queue: requests that may wait at once per node; None: as many as `max_concurrent`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
        nonces_per_batch: int = 32,
        load_delay: float = 0.0,
        callback_timeout: float = 5.0,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
        max_queue: int | None = None,
    ) -> None:
        if batch_interval <= 0 or nonces_per_batch <= 0:
            raise ValueError("batch_interval and nonces_per_batch must be positive")
        # Checked here, so that a bad figure fails at construction rather than at the first add_node.
        NodeCapacity(
            max_concurrent=max_concurrent,
            tokens_per_second=tokens_per_second,
            queue_timeout=queue_timeout,
            max_queue=max_queue,
        )
        self.max_concurrent = max_concurrent
        self.tokens_per_second = tokens_per_second
        self.queue_timeout = queue_timeout
        self.max_queue = max_queue
        self.host = host
        self.batch_interval = batch_interval
        self.nonces_per_batch = nonces_per_batch
        self.default_load_delay = load_delay
        self._callback_timeout = callback_timeout
        self._nodes: dict[str, SimNode] = {}
        self.tasks = TaskOwner("sim-mlnodes")  # the nodes' batch loops
        self._closing = asyncio.Event()
        self._callback_http: httpx.AsyncClient | None = None
        self.app: ASGIApp = FaultsAndRecording(self, build_app(self))
        self._http_server = EmbeddedServer(self.app, host=host, port=port)

    # --- lifecycle ---

    async def start(self) -> None:
        if self._http_server.started:
            raise RuntimeError("already started")
        self._closing.clear()
        self._callback_http = httpx.AsyncClient(timeout=self._callback_timeout, verify=default_ssl_context())
        try:
            await self._http_server.start()
        except BaseException:
            await self._close_callback_http()
            raise

    async def stop(self) -> None:
        """End held requests and batch loops, then close the server and the callback client."""
        self._closing.set()
        for node in self._nodes.values():
            node.cancel_loop()
            node.abort_load()
        await self.tasks.stop()
        await self._http_server.stop()
        await self._close_callback_http()

    async def _close_callback_http(self) -> None:
        if self._callback_http is not None:
            await self._callback_http.aclose()
            self._callback_http = None

    async def __aenter__(self) -> SimMLNodeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- addresses ---

    @property
    def port(self) -> int:
        return self._http_server.port

    @property
    def url(self) -> str:
        return self._http_server.url

    @staticmethod
    def segment(name: str) -> str:
        return f"{NODES_PREFIX}/{name}"

    def node_url(self, name: str) -> str:
        """The node's poc URL and inference URL (both are the same base here)."""
        return self.url + self.segment(name)

    @property
    def callback_http(self) -> httpx.AsyncClient:
        if self._callback_http is None:
            raise RuntimeError("server not started")
        return self._callback_http

    # --- nodes ---

    def add_node(
        self,
        name: str,
        *,
        load_delay: float | None = None,
        max_concurrent: int | None = None,
        tokens_per_second: float | None = None,
    ) -> SimNode:
        """A new node (STOPPED); capacity figures not given are the server's defaults."""
        if not _NODE_NAME_RE.match(name):
            raise ValueError(f"node name {name!r} must match {_NODE_NAME_RE.pattern}")
        if name in self._nodes:
            raise ValueError(f"node {name!r} already exists")
        capacity = NodeCapacity(
            max_concurrent=self.max_concurrent if max_concurrent is None else max_concurrent,
            tokens_per_second=self.tokens_per_second if tokens_per_second is None else tokens_per_second,
            queue_timeout=self.queue_timeout,
            max_queue=self.max_queue,
        )
        node = SimNode(
            name=name,
            server=self,
            load_delay=self.default_load_delay if load_delay is None else load_delay,
            capacity=capacity,
        )
        self._nodes[name] = node
        return node

    async def remove_node(self, name: str) -> None:
        node = self._nodes.pop(name)
        task = node.cancel_loop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def node(self, name: str) -> SimNode:
        return self._nodes[name]

    def find_node(self, name: str) -> SimNode | None:
        return self._nodes.get(name)

    @property
    def nodes(self) -> list[SimNode]:
        return list(self._nodes.values())

    def calls(self, name: str) -> list[RecordedCall]:
        return list(self._nodes[name].calls)

    def clear_calls(self, name: str) -> None:
        self._nodes[name].calls.clear()

    def set_fault(
        self,
        name: str,
        *,
        latency: float = 0.0,
        status: int | None = None,
        timeout: bool = False,
        refuse: bool = False,
        path_prefix: str | None = None,
        count: int | None = None,
    ) -> None:
        """Inject a fault into the node's answers (see FaultSpec); replaces any previous one."""
        spec = FaultSpec(
            latency=latency, status=status, timeout=timeout, refuse=refuse, path_prefix=path_prefix, count=count
        )
        self._nodes[name].fault = spec if spec.label() else None

    def clear_fault(self, name: str) -> None:
        self._nodes[name].fault = None

    # --- helpers for handlers ---

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    async def sleep_unless_closing(self, seconds: float) -> bool:
        """Sleep; returns False early if the server starts closing meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
            return False
        return True

    async def wait_closing(self) -> None:
        await self._closing.wait()


async def start_sim_mlnodes(
    names: Iterable[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    batch_interval: float = DEFAULT_BATCH_INTERVAL,
    nonces_per_batch: int = 32,
    load_delay: float = 0.0,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND,
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
) -> SimMLNodeServer:
    """Start a server with `names` already added (for `dapi devnet`); the caller must `await srv.stop()`."""
    server = SimMLNodeServer(
        host=host,
        port=port,
        batch_interval=batch_interval,
        nonces_per_batch=nonces_per_batch,
        load_delay=load_delay,
        max_concurrent=max_concurrent,
        tokens_per_second=tokens_per_second,
        queue_timeout=queue_timeout,
    )
    for name in names:
        server.add_node(name)
    await server.start()
    return server
