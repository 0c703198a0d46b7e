"""Simulated ML nodes: one HTTP server on loopback hosting many nodes, each under its own path segment.

A node named `n1` lives under `/nodes/n1`; that is both its poc_segment and its inference_segment, so the
daemon's node entry is `{host: 127.0.0.1, poc_port: P, poc_segment: /nodes/n1, inference_port: P,
inference_segment: /nodes/n1}`. Under it the node serves the real ML node's management API
(reference/http.md §6.1, the 409 service-conflict rule included), `/health`, `/v1/chat/completions` (a
deterministic echo) and `/tokenize` of its inference port.

PoW is simulated without a GPU: the distance of a nonce is a hash of (public_key, block_hash, block_height,
nonce) scaled to [0, DIST_SCALE), so the validator of a batch recomputes exactly what the prover found
and a forged distance is caught. Like the real node's Sender (§6.2), every `batch_interval` a generating
node POSTs one batch to `<init url>/generated` with the nonces of its nonce space (node_id + k·node_count)
whose distance is below r_target, and a validating node POSTs a ValidatedBatch to `<init url>/validated`
for every batch it was given through `/api/v1/pow/validate`. Failed POSTs are kept and retried each tick
while the node stays in that phase, as the real Sender does.

Fault injection (per node, optionally limited to a path prefix and to the next N calls): latency before
answering, a fixed HTTP status, a timeout (the request is held until the client gives up), and a refused
connection. A refused connection is emulated by closing the TCP connection without writing a response:
every node shares the server's port, so nothing can refuse the connect itself, but an HTTP client sees
the same thing a down node gives it, a transport error and no status ("server disconnected without
sending a response" in httpx).

Outside `/nodes/`, `/sim/...` inspects and drives the simulation (list nodes, the calls each received,
the batches it posted, add nodes, set faults) for a standalone server (`python -m dapi.devnet.mlnode`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from dapi.mlnodeclient.models import InferenceUpRequest, MLNodeState, ProofBatch, ValidatedBatch
from dapi.runtime.serving import EmbeddedServer
from dapi.runtime.tls import default_ssl_context

log = logging.getLogger(__name__)

NODES_PREFIX = "/nodes"
SIM_PREFIX = "/sim"
# Simulated distances are uniform in [0, DIST_SCALE); with the MainNet r_target (~1.40) about 70% of
# the nonces a node tries end up in its batches.
DIST_SCALE = 2.0
# The real node's p for the binomial test of invalid nonces (pow/data.py ValidatedBatch).
INVALID_NONCE_P = 5e-4
DEFAULT_BATCH_INTERVAL = 5.0  # the real Sender's period
MAX_PENDING_BATCHES = 1000
MAX_RECORDED_CALLS = 10_000
MAX_KEPT_BATCHES = 1000

_NODE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_NODE_PATH_RE = re.compile(rf"^{NODES_PREFIX}/([^/]+)(/.*)?$")

ASGIScope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]


# --- the simulated PoW ---------------------------------------------------------------------------


def sim_dist(public_key: str, block_hash: str, block_height: int, nonce: int) -> float:
    """The simulated distance of a nonce: deterministic, so prover and validator agree on it.

    The strings are used as sent (no case folding): the real node seeds its model from them, so a
    dAPI that sends a different case to prover and validator must see fraud here too.
    """
    digest = hashlib.sha256(f"{public_key}:{block_hash}:{block_height}:{nonce}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 * DIST_SCALE


def probability_honest(n_invalid: int, n: int, p: float = INVALID_NONCE_P) -> float:
    """P(X >= n_invalid) for X ~ Binomial(n, p): the real node's one-sided binomial test p-value."""
    if n_invalid <= 0:
        return 1.0
    if n_invalid > n:
        return 0.0
    # Summed in log space term by term from k upwards: 1 - cdf(k-1) would cancel to 0 for the small
    # tails that matter here (a few invalid nonces out of hundreds).
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(n_invalid, n + 1):
        log_term = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        term = math.exp(log_term)
        total += term
        if term < total * 1e-17:
            break
    return min(total, 1.0)


def validate_proof_batch(batch: ProofBatch, *, r_target: float, fraud_threshold: float) -> ValidatedBatch:
    """What an honest validator node reports for `batch` (the real ValidatedBatch.__post_init__)."""
    recomputed = [sim_dist(batch.public_key, batch.block_hash, batch.block_height, n) for n in batch.nonces]
    n_invalid = sum(1 for d in recomputed if d > r_target)
    p_honest = probability_honest(n_invalid, len(recomputed))
    return ValidatedBatch(
        public_key=batch.public_key,
        block_hash=batch.block_hash,
        block_height=batch.block_height,
        nonces=list(batch.nonces),
        dist=recomputed,
        node_id=batch.node_id,
        received_dist=list(batch.dist),
        r_target=r_target,
        fraud_threshold=fraud_threshold,
        n_invalid=n_invalid,
        probability_honest=p_honest,
        fraud_detected=p_honest < fraud_threshold,
    )


# --- request bodies as the real node declares them ------------------------------------------------


class PowInitRequest(BaseModel):
    """The real node's PowInitRequestUrl: node_id and node_count default to -1 ("not set")."""

    node_id: int = -1
    node_count: int = -1
    block_hash: str
    block_height: int
    public_key: str
    batch_size: int
    r_target: float
    fraud_threshold: float
    params: dict[str, Any] = Field(default_factory=dict)
    url: str


class ProofBatchIn(BaseModel):
    """`/api/v1/pow/validate` body: the real node's ProofBatch dataclass, every field required."""

    public_key: str
    block_hash: str
    block_height: int
    nonces: list[int]
    dist: list[float]
    node_id: int


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


class AddNodeRequest(BaseModel):
    """Body of `POST /sim/nodes`."""

    name: str
    load_delay: float | None = None


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One request a simulated node received: `path` is relative to the node's segment."""

    method: str
    path: str
    json: Any
    time: float
    content_type: str | None = None
    fault: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class PowPhase(StrEnum):
    IDLE = "IDLE"
    GENERATE = "GENERATE"
    VALIDATE = "VALIDATE"


_POW_STATUS_OF_PHASE = {PowPhase.IDLE: "IDLE", PowPhase.GENERATE: "GENERATING", PowPhase.VALIDATE: "VALIDATING"}


# --- one simulated node --------------------------------------------------------------------------


@dataclass(eq=False)
class SimNode:
    """The state of one simulated ML node. Read it freely in tests; change it through the HTTP API.

    `inference_up_error`, when set, makes the next inference/up answer the real node's failure shape
    (200 `{"status": "ERROR", "message": ...}`), and `load_delay` is how long inference/up takes.
    """

    name: str
    server: SimMLNodeServer = field(repr=False)
    load_delay: float = 0.0
    inference_up_error: str | None = None

    state: MLNodeState = MLNodeState.STOPPED
    pow_phase: PowPhase | None = None
    pow_init: PowInitRequest | None = None
    model: str | None = None
    dtype: str | None = None
    args: list[str] = field(default_factory=list)
    inference_ready: bool = False
    inference_ups: list[InferenceUpRequest] = field(default_factory=list)
    training_config: dict[str, Any] | None = None

    generated_posted: deque[ProofBatch] = field(default_factory=lambda: deque(maxlen=MAX_KEPT_BATCHES))
    validated_posted: deque[ValidatedBatch] = field(default_factory=lambda: deque(maxlen=MAX_KEPT_BATCHES))
    generated_nonces_total: int = 0
    loop_error: str | None = None
    last_post_error: str | None = None

    calls: deque[RecordedCall] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED_CALLS), repr=False)
    fault: FaultSpec | None = None

    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _next_k: int = field(default=0, repr=False)
    _pending_generated: list[ProofBatch] = field(default_factory=list, repr=False)
    _pending_validated: list[ValidatedBatch] = field(default_factory=list, repr=False)
    _to_validate: list[ProofBatch] = field(default_factory=list, repr=False)
    _load_aborted: asyncio.Event | None = field(default=None, repr=False)

    @property
    def segment(self) -> str:
        return f"{NODES_PREFIX}/{self.name}"

    @property
    def batch_task(self) -> asyncio.Task[None] | None:
        """The task of the current batch loop (the real node's Sender), if PoW was initialised."""
        return self._task

    @property
    def batch_loop_running(self) -> bool:
        return self._task is not None and not self._task.done()

    def pow_status(self) -> dict[str, Any]:
        if self.state is not MLNodeState.POW or self.pow_phase is None:
            return {"status": "NOT_LOADED"}
        return {"status": _POW_STATUS_OF_PHASE[self.pow_phase], "is_model_initialized": True}

    def snapshot(self) -> dict[str, Any]:
        """A JSON view for `/sim/nodes` (batch lists excluded; they have their own route)."""
        return {
            "name": self.name,
            "segment": self.segment,
            "state": self.state.value,
            "pow_status": self.pow_status(),
            "pow_init": self.pow_init.model_dump() if self.pow_init else None,
            "model": self.model,
            "dtype": self.dtype,
            "args": list(self.args),
            "inference_ready": self.inference_ready,
            "generated_batches_posted": len(self.generated_posted),
            "validated_batches_posted": len(self.validated_posted),
            "generated_nonces_total": self.generated_nonces_total,
            "pending_generated": len(self._pending_generated),
            "pending_validated": len(self._pending_validated),
            "batch_loop_running": self.batch_loop_running,
            "calls": len(self.calls),
            "fault": self.fault.model_dump() if self.fault else None,
            "loop_error": self.loop_error,
            "last_post_error": self.last_post_error,
        }

    # --- transitions (each mirrors the real node's route of the same name) ---

    def stop_all(self) -> None:
        self._stop_pow()
        self._stop_inference()
        self.training_config = None
        self.state = MLNodeState.STOPPED

    def start_pow(self, req: PowInitRequest, phase: PowPhase) -> None:
        # The real node re-initialises (fresh Sender, nonces from the start, pending batches dropped)
        # only when nothing runs or the request differs; otherwise it just switches phase in place.
        if self.state is not MLNodeState.POW or self.pow_init != req:
            self._stop_pow()
            self.pow_init = req
            self.state = MLNodeState.POW
            self._start_loop()
        self.pow_phase = phase

    def stop_pow(self) -> None:
        self._stop_pow()
        self.state = MLNodeState.STOPPED

    def queue_for_validation(self, batch: ProofBatch) -> None:
        self._to_validate.append(batch)

    async def inference_up(self, req: InferenceUpRequest) -> dict[str, Any]:
        # Like the real node: a running vLLM is replaced, and the call returns only once the new one serves.
        self._stop_inference()
        aborted = self._load_aborted = asyncio.Event()
        self.state = MLNodeState.INFERENCE
        self.model, self.dtype, self.args = req.model, req.dtype, list(req.additional_args)
        self.inference_ups.append(req)
        if self.load_delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(aborted.wait(), timeout=self.load_delay)
        if aborted.is_set():
            return {"status": "ERROR", "message": "inference was stopped while the model was loading"}
        if self.inference_up_error is not None:
            message, self.inference_up_error = self.inference_up_error, None
            self._stop_inference()
            self.state = MLNodeState.STOPPED
            return {"status": "ERROR", "message": message}
        self.inference_ready = True
        return {"status": "OK"}

    def abort_load(self) -> None:
        """End an inference/up that is still loading (it answers ERROR); the node state is kept."""
        if self._load_aborted is not None:
            self._load_aborted.set()

    def inference_down(self) -> None:
        self._stop_inference()
        self.state = MLNodeState.STOPPED

    def _stop_inference(self) -> None:
        if self._load_aborted is not None:
            self._load_aborted.set()  # an inference/up still loading ends now and does not come up
            self._load_aborted = None
        self.inference_ready = False
        self.model, self.dtype, self.args = None, None, []

    def _stop_pow(self) -> None:
        self.cancel_loop()
        self.pow_init = None
        self.pow_phase = None
        self._next_k = 0
        self._pending_generated.clear()
        self._pending_validated.clear()
        self._to_validate.clear()

    # --- the Sender loop ---

    def _start_loop(self) -> None:
        self.cancel_loop()
        self.loop_error = None
        self._task = asyncio.get_running_loop().create_task(self._sender_loop(), name=f"sim-mlnode-{self.name}")
        self._task.add_done_callback(self._on_loop_done)

    def cancel_loop(self) -> asyncio.Task[None] | None:
        """Cancel the batch loop; returns the task so the caller may await its end."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            self.server.retired_tasks.add(task)
        return task

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        self.server.retired_tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.loop_error = repr(exc)
            log.error("sim ML node %s: batch loop crashed", self.name, exc_info=exc)

    async def _sender_loop(self) -> None:
        while True:
            await asyncio.sleep(self.server.batch_interval)
            init = self.pow_init
            if init is None:
                return
            if self.pow_phase is PowPhase.GENERATE:
                batch = self._generate(init)
                if batch.nonces:
                    _append_bounded(self._pending_generated, batch)
                await self._post_pending(init.url + "/generated", self._pending_generated, self.generated_posted)
            elif self.pow_phase is PowPhase.VALIDATE:
                while self._to_validate:
                    received = self._to_validate.pop(0)
                    validated = validate_proof_batch(
                        received, r_target=init.r_target, fraud_threshold=init.fraud_threshold
                    )
                    _append_bounded(self._pending_validated, validated)
                await self._post_pending(init.url + "/validated", self._pending_validated, self.validated_posted)

    def _generate(self, init: PowInitRequest) -> ProofBatch:
        nonces: list[int] = []
        dists: list[float] = []
        for k in range(self._next_k, self._next_k + self.server.nonces_per_batch):
            nonce = init.node_id + k * init.node_count
            d = sim_dist(init.public_key, init.block_hash, init.block_height, nonce)
            if d < init.r_target:
                nonces.append(nonce)
                dists.append(d)
        self._next_k += self.server.nonces_per_batch
        self.generated_nonces_total += len(nonces)
        return ProofBatch(
            public_key=init.public_key,
            block_hash=init.block_hash,
            block_height=init.block_height,
            nonces=nonces,
            dist=dists,
            node_id=init.node_id,
        )

    async def _post_pending(self, url: str, pending: list[Any], posted: deque[Any]) -> None:
        while pending:
            batch = pending[0]
            try:
                resp = await self.server.callback_http.post(url, json=batch.model_dump(mode="json"))
                resp.raise_for_status()
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                error = f"POST {url}: {type(exc).__name__}: {exc}"
                # Logged on change only: a receiver that is down would otherwise log every tick.
                if error != self.last_post_error:
                    log.warning("sim ML node %s: %s (kept for retry)", self.name, error)
                self.last_post_error = error
                return
            self.last_post_error = None
            pending.pop(0)
            posted.append(batch)


def _append_bounded(pending: list[Any], item: Any) -> None:
    pending.append(item)
    if len(pending) > MAX_PENDING_BATCHES:
        del pending[0]


# --- the server ----------------------------------------------------------------------------------


class SimMLNodeServer:
    """Many simulated ML nodes behind one uvicorn server on `host` (port 0: the OS picks one).

    `async with SimMLNodeServer(batch_interval=0.05) as srv:` starts it; `srv.url` is its base URL and
    `srv.add_node("n1")` a node whose poc and inference base URL is `srv.node_url("n1")`.
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
    ) -> None:
        if batch_interval <= 0 or nonces_per_batch <= 0:
            raise ValueError("batch_interval and nonces_per_batch must be positive")
        self.host = host
        self.batch_interval = batch_interval
        self.nonces_per_batch = nonces_per_batch
        self.default_load_delay = load_delay
        self._callback_timeout = callback_timeout
        self._nodes: dict[str, SimNode] = {}
        self.retired_tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._callback_http: httpx.AsyncClient | None = None
        self.app: ASGIApp = _FaultsAndRecording(self, _build_app(self))
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
        if self.retired_tasks:
            await asyncio.gather(*self.retired_tasks, return_exceptions=True)
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

    def add_node(self, name: str, *, load_delay: float | None = None) -> SimNode:
        if not _NODE_NAME_RE.match(name):
            raise ValueError(f"node name {name!r} must match {_NODE_NAME_RE.pattern}")
        if name in self._nodes:
            raise ValueError(f"node {name!r} already exists")
        node = SimNode(name=name, server=self, load_delay=self.default_load_delay if load_delay is None else load_delay)
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


# --- fault injection and call recording (raw ASGI, in front of the FastAPI app) ------------------


class _FaultsAndRecording:
    """Records each call to a node and applies its fault before the routes see the request.

    Raw ASGI rather than FastAPI middleware because two of the faults are not responses at all:
    holding a request forever and dropping the connection.
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
                json=_json_or_none(body),
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
        await self._app(scope, _replay(body, receive), send)

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


def _json_or_none(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


# --- routes --------------------------------------------------------------------------------------


def _build_app(server: SimMLNodeServer) -> FastAPI:
    # strict_content_type=False: the Go client posts JSON without a Content-Type, and the FastAPI of the
    # real node parses it anyway; recent FastAPI would answer 422.
    app = FastAPI(
        title="dapi simulated ML nodes",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        strict_content_type=False,
    )

    # Dependencies read the path parameter from the request: annotations of these nested functions
    # are strings (postponed evaluation) that FastAPI could not resolve against local names.
    def get_node(request: Request) -> SimNode:
        name = request.path_params["name"]
        node = server.find_node(name)
        if node is None:
            raise HTTPException(404, f"no simulated ML node {name!r}")
        return node

    def service_guard(service: MLNodeState) -> Callable[[Request], SimNode]:
        # The real node's check_service_conflicts: a router of one service answers 409 while another runs.
        def guard(request: Request) -> SimNode:
            node = get_node(request)
            if node.state not in (MLNodeState.STOPPED, service):
                raise HTTPException(
                    409,
                    f"Cannot run {service.value} because MLNode is currently in {node.state.value} mode. "
                    f"Please stop {node.state.value} first.",
                )
            return node

        return guard

    pow_node = Depends(service_guard(MLNodeState.POW))
    inference_node = Depends(service_guard(MLNodeState.INFERENCE))
    train_node = Depends(service_guard(MLNodeState.TRAIN))
    any_node = Depends(get_node)

    api = APIRouter(prefix=NODES_PREFIX + "/{name}/api/v1")

    @api.get("/state")
    async def state(node: SimNode = any_node) -> dict[str, Any]:
        return {"state": node.state.value}

    @api.post("/stop")
    async def stop(node: SimNode = any_node) -> dict[str, Any]:
        node.stop_all()
        return {"status": "OK"}

    @api.post("/pow/init")
    async def pow_init(req: PowInitRequest, node: SimNode = pow_node) -> dict[str, Any]:
        node.start_pow(req, PowPhase.IDLE)
        return {"status": "OK", "pow_status": node.pow_status()}

    @api.post("/pow/init/generate")
    async def pow_init_generate(req: PowInitRequest, node: SimNode = pow_node) -> dict[str, Any]:
        # The real node rejects only -1 ("not set"); the sim also rejects values that would make the
        # nonce space node_id + k·node_count degenerate, to surface such a dAPI bug loudly.
        if req.node_id == -1 or req.node_count == -1:
            raise HTTPException(400, "Node ID and node count must be set")
        if req.node_id < 0 or req.node_count < 1:
            raise HTTPException(400, f"invalid node_id {req.node_id} / node_count {req.node_count}")
        node.start_pow(req, PowPhase.GENERATE)
        return {"status": "OK", "pow_status": node.pow_status()}

    @api.post("/pow/init/validate")
    async def pow_init_validate(req: PowInitRequest, node: SimNode = pow_node) -> dict[str, Any]:
        node.start_pow(req, PowPhase.VALIDATE)
        return {"status": "OK", "pow_status": node.pow_status()}

    @api.post("/pow/phase/generate")
    async def pow_phase_generate(node: SimNode = pow_node) -> dict[str, Any]:
        init = node.pow_init
        if node.state is not MLNodeState.POW or init is None:
            raise HTTPException(400, "PoW is not running")
        if init.node_id < 0 or init.node_count < 1:
            raise HTTPException(400, "Node ID and node count must be set")
        node.pow_phase = PowPhase.GENERATE
        return {"status": "OK", "pow_status": node.pow_status()}

    @api.post("/pow/phase/validate")
    async def pow_phase_validate(node: SimNode = pow_node) -> dict[str, Any]:
        if node.state is not MLNodeState.POW or node.pow_init is None:
            raise HTTPException(400, "PoW is not running")
        node.pow_phase = PowPhase.VALIDATE
        return {"status": "OK", "pow_status": node.pow_status()}

    @api.post("/pow/validate")
    async def pow_validate(batch: ProofBatchIn, node: SimNode = pow_node) -> None:
        if node.state is not MLNodeState.POW:
            raise HTTPException(400, "PoW is not running")
        node.queue_for_validation(ProofBatch.model_validate(batch.model_dump()))

    @api.get("/pow/status")
    async def pow_status(node: SimNode = pow_node) -> dict[str, Any]:
        return node.pow_status()

    @api.post("/pow/stop")
    async def pow_stop(node: SimNode = pow_node) -> dict[str, Any]:
        node.stop_pow()
        return {"status": "OK", "pow_status": node.pow_status()}

    @api.post("/inference/up")
    async def inference_up(req: InferenceUpRequest, node: SimNode = inference_node) -> dict[str, Any]:
        return await node.inference_up(req)

    @api.post("/inference/down")
    async def inference_down(node: SimNode = inference_node) -> dict[str, Any]:
        node.inference_down()
        return {"status": "OK"}

    @api.post("/train/start")
    async def train_start(config: dict[str, Any], node: SimNode = train_node) -> dict[str, Any]:
        if node.state is MLNodeState.TRAIN:
            raise HTTPException(400, "Training is already running")
        node.training_config = config
        node.state = MLNodeState.TRAIN
        return {"status": "Training started"}

    @api.post("/train/stop")
    async def train_stop(node: SimNode = train_node) -> dict[str, Any]:
        if node.state is not MLNodeState.TRAIN:
            raise HTTPException(400, "Training is not running")
        node.training_config = None
        node.state = MLNodeState.STOPPED
        return {"status": "Training stopped"}

    @api.get("/train/status")
    async def train_status(node: SimNode = train_node) -> dict[str, Any]:
        return {"status": node.state is MLNodeState.TRAIN}

    inference = APIRouter(prefix=NODES_PREFIX + "/{name}")

    @inference.get("/health")
    async def health(node: SimNode = any_node) -> Response:
        if not node.inference_ready:
            return JSONResponse({"detail": "no inference backend is running"}, status_code=503)
        return Response(status_code=200)

    @inference.get("/v1/models")
    async def models(node: SimNode = any_node) -> Response:
        if not node.inference_ready:
            return JSONResponse({"detail": "no inference backend is running"}, status_code=503)
        return JSONResponse({"object": "list", "data": [{"id": node.model, "object": "model", "owned_by": "sim"}]})

    @inference.post("/v1/chat/completions")
    async def chat_completions(request: Request, node: SimNode = any_node) -> Response:
        if not node.inference_ready:
            return JSONResponse({"detail": "no inference backend is running"}, status_code=503)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"detail": "body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"detail": "body is not a JSON object"}, status_code=400)
        if body.get("model") != node.model:
            return JSONResponse(
                {
                    "object": "error",
                    "message": f"The model `{body.get('model')}` does not exist.",
                    "type": "NotFoundError",
                    "param": None,
                    "code": 404,
                },
                status_code=404,
            )
        return _echo_completion(body, node.model)

    @inference.post("/tokenize")
    async def tokenize(request: Request, node: SimNode = any_node) -> Response:
        if not node.inference_ready:
            return JSONResponse({"detail": "no inference backend is running"}, status_code=503)
        body = _json_or_none(await request.body())
        prompt = body.get("prompt", "") if isinstance(body, dict) else ""
        tokens = list(range(len(str(prompt).split())))
        return JSONResponse({"count": len(tokens), "max_model_len": 4096, "tokens": tokens})

    sim = APIRouter(prefix=SIM_PREFIX)

    @sim.get("/nodes")
    async def list_nodes() -> dict[str, Any]:
        return {"nodes": [n.snapshot() for n in server.nodes]}

    @sim.post("/nodes", status_code=201)
    async def add_node(req: AddNodeRequest) -> dict[str, Any]:
        try:
            node = server.add_node(req.name, load_delay=req.load_delay)
        except ValueError as exc:
            status = 409 if req.name in {n.name for n in server.nodes} else 400
            raise HTTPException(status, str(exc)) from exc
        return node.snapshot()

    @sim.get("/nodes/{name}")
    async def get_node_info(node: SimNode = any_node) -> dict[str, Any]:
        return node.snapshot()

    @sim.get("/nodes/{name}/calls")
    async def get_calls(node: SimNode = any_node) -> dict[str, Any]:
        return {"calls": [c.to_json() for c in node.calls]}

    @sim.delete("/nodes/{name}/calls", status_code=204)
    async def clear_calls(node: SimNode = any_node) -> None:
        node.calls.clear()

    @sim.get("/nodes/{name}/batches")
    async def get_batches(node: SimNode = any_node) -> dict[str, Any]:
        return {
            "generated": [b.model_dump(mode="json") for b in node.generated_posted],
            "validated": [b.model_dump(mode="json") for b in node.validated_posted],
        }

    @sim.put("/nodes/{name}/fault")
    async def put_fault(spec: FaultSpec, node: SimNode = any_node) -> dict[str, Any]:
        node.fault = spec if spec.label() else None
        return {"fault": node.fault.model_dump() if node.fault else None}

    @sim.delete("/nodes/{name}/fault", status_code=204)
    async def delete_fault(node: SimNode = any_node) -> None:
        node.fault = None

    app.include_router(api)
    app.include_router(inference)
    app.include_router(sim)
    return app


def _echo_completion(body: dict[str, Any], model: str | None) -> Response:
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else {}
    content = last.get("content", "") if isinstance(last, dict) else ""
    if isinstance(content, list):  # OpenAI content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    text = f"echo: {content}"
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]
    completion_id = f"chatcmpl-sim-{digest}"
    created = int(time.time())
    prompt_tokens = (
        sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
        if isinstance(messages, list)
        else 0
    )
    completion_tokens = len(text.split())
    if body.get("stream"):

        async def chunks() -> Any:
            for delta, finish in (({"role": "assistant", "content": text}, None), ({}, "stop")):
                chunk = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


# --- standalone ----------------------------------------------------------------------------------


async def start_sim_mlnodes(
    names: Iterable[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    batch_interval: float = DEFAULT_BATCH_INTERVAL,
    nonces_per_batch: int = 32,
    load_delay: float = 0.0,
) -> SimMLNodeServer:
    """Start a server with `names` already added (for `dapi devnet`); the caller must `await srv.stop()`."""
    server = SimMLNodeServer(
        host=host, port=port, batch_interval=batch_interval, nonces_per_batch=nonces_per_batch, load_delay=load_delay
    )
    for name in names:
        server.add_node(name)
    await server.start()
    return server


async def _run_standalone(args: argparse.Namespace) -> None:
    server = await start_sim_mlnodes(
        args.node, host=args.host, port=args.port, batch_interval=args.batch_interval, load_delay=args.load_delay
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(
            json.dumps(
                {"event": "ready", "url": server.url, "nodes": {n.name: server.node_url(n.name) for n in server.nodes}}
            ),
            flush=True,
        )
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dapi.devnet.mlnode", description="Serve simulated ML nodes on one port."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--node", action="append", default=[], help="node name (repeatable); more via POST /sim/nodes")
    parser.add_argument("--batch-interval", type=float, default=DEFAULT_BATCH_INTERVAL)
    parser.add_argument("--load-delay", type=float, default=0.0, help="seconds inference/up takes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_run_standalone(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
