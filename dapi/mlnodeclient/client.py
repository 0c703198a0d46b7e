"""Async client for one ML node: every call of reference/http.md §4.

Deliberate differences from the Go client (which ignores the status of most POSTs and gives every call
the same 15-minute timeout):
* every call checks the status: a node that answers 409 to init/generate is not generating, and the
  broker must not record that it is; a 5xx is retriable, a 4xx is not;
* `inference/up` answering 200 `{"status": "ERROR"}` (how the real node reports a failed vLLM start)
  is an error too;
* each kind of call has its own total deadline (see MLNodeTimeouts), so one hung node holds its worker for
  seconds, not a quarter of an hour; only inference/up, which waits for vLLM to load, gets the long one;
* the training status call uses the real node's `GET /api/v1/train/status` (the reference's GET goes to
  `train/start` by mistake).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from dapi.mlnodeclient.errors import (
    MLNodeBadResponse,
    MLNodeCommandFailed,
    MLNodeConflict,
    MLNodeHTTPError,
    MLNodeTimeout,
    MLNodeUnavailable,
)
from dapi.mlnodeclient.models import (
    InferenceUpRequest,
    InitDto,
    MLNodeState,
    PowStatus,
    ProofBatch,
    StartTrainingRequest,
    node_base_url,
)
from dapi.runtime.tls import default_ssl_context

_M = TypeVar("_M", bound=BaseModel)

STATE_PATH = "/api/v1/state"
STOP_PATH = "/api/v1/stop"
POW_STATUS_PATH = "/api/v1/pow/status"
INIT_GENERATE_PATH = "/api/v1/pow/init/generate"
INIT_VALIDATE_PATH = "/api/v1/pow/init/validate"
VALIDATE_PATH = "/api/v1/pow/validate"
INFERENCE_UP_PATH = "/api/v1/inference/up"
TRAIN_START_PATH = "/api/v1/train/start"
TRAIN_STATUS_PATH = "/api/v1/train/status"
HEALTH_PATH = "/health"


@dataclass(frozen=True, slots=True)
class MLNodeTimeouts:
    """Total deadlines (seconds) per kind of call, connection set-up included.

    query: state, pow/status, health, train/status — cheap reads the status poller makes often.
    command: stop, init/generate, init/validate, pow/validate, train/start — the real node answers these
    once the switch is made; PoW model loading continues in the background (pow/status shows LOADING).
    inference_up: the real node answers only after vLLM has loaded the model, which takes minutes;
    this is the reference's 15-minute client timeout.
    """

    connect: float = 5.0
    query: float = 10.0
    command: float = 60.0
    inference_up: float = 900.0


DEFAULT_TIMEOUTS = MLNodeTimeouts()


@dataclass(frozen=True, slots=True)
class CallInFlight:
    """A call sent and not answered yet: which one, to where, since when (``time.monotonic()``)."""

    call: str
    url: str
    started: float

    def waited(self) -> float:
        return time.monotonic() - self.started

    def describe(self) -> str:
        return f"{self.call} {self.url} had not answered after {self.waited():.1f} s"


def create_http_client(*, max_connections: int = 1000) -> httpx.AsyncClient:
    """A connection pool to share between the clients of many ML nodes.

    The pool is sized for a PoC fan-out that reaches every node at once; httpx's default of 100
    connections would queue the rest behind the pool timeout.
    """
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        timeout=None,  # every call passes its own deadline
        verify=default_ssl_context(),
    )


class MLNodeClient:
    """The API node's view of one ML node: management calls under `poc_url`, health under `inference_url`.

    Args:
        poc_url: the base URL of the node's management API (host, PoC port and segment).
        inference_url: the base URL of the node's inference server (host, inference port and segment).
        http: a connection pool to share between many nodes' clients; the caller then owns it and
            `aclose()` leaves it open. None: the client makes its own and closes it in `aclose()`.
        timeouts: the deadline of each kind of call, in seconds.
    """

    def __init__(
        self,
        poc_url: str,
        inference_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeouts: MLNodeTimeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        self._poc_url = _checked_base(poc_url, "poc_url")
        self._inference_url = _checked_base(inference_url, "inference_url")
        self._own_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=None, verify=default_ssl_context())
        self.timeouts = timeouts
        # The call each task is waiting on, so whoever gives up on a task can say what it was stuck in.
        self._in_flight: dict[asyncio.Task[Any], CallInFlight] = {}

    @classmethod
    def for_node(
        cls,
        host: str,
        *,
        poc_port: int,
        inference_port: int,
        poc_segment: str = "",
        inference_segment: str = "",
        http: httpx.AsyncClient | None = None,
        timeouts: MLNodeTimeouts = DEFAULT_TIMEOUTS,
    ) -> MLNodeClient:
        """A client for a node config entry (reference/http.md §3.1's host, ports and segments)."""
        return cls(
            node_base_url(host, poc_port, poc_segment),
            node_base_url(host, inference_port, inference_segment),
            http=http,
            timeouts=timeouts,
        )

    @property
    def poc_url(self) -> str:
        return self._poc_url

    @property
    def inference_url(self) -> str:
        return self._inference_url

    def call_in_flight(self, task: asyncio.Task[Any]) -> CallInFlight | None:
        """The call `task` is waiting on right now, if it is waiting on one of this client's calls."""
        return self._in_flight.get(task)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> MLNodeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- management API (PoC URL) -------------------------------------------------------------

    async def stop(self) -> None:
        """POST /api/v1/stop with no body: stops PoW, inference and training, whichever runs."""
        await self._call("stop", "POST", self._poc_url + STOP_PATH, timeout=self.timeouts.command)

    async def node_state(self) -> MLNodeState:
        """GET /api/v1/state → which service runs (UNKNOWN for a value this client does not know)."""
        resp = await self._call("node_state", "GET", self._poc_url + STATE_PATH, timeout=self.timeouts.query)
        body = _json_object(resp, "node_state")
        state = body.get("state")
        if not isinstance(state, str):
            raise MLNodeBadResponse(f"no string 'state' in {resp.text[:200]!r}", call="node_state", url=str(resp.url))
        return MLNodeState(state)

    async def pow_status(self) -> PowStatus:
        """GET /api/v1/pow/status → PoW phase and whether its model is loaded."""
        resp = await self._call("pow_status", "GET", self._poc_url + POW_STATUS_PATH, timeout=self.timeouts.query)
        return _parse(PowStatus, resp, "pow_status")

    async def init_generate(self, dto: InitDto) -> None:
        """POST /api/v1/pow/init/generate: (re)initialise PoW and start generating nonces."""
        await self._call(
            "init_generate",
            "POST",
            self._poc_url + INIT_GENERATE_PATH,
            json_body=dto.model_dump(mode="json"),
            timeout=self.timeouts.command,
        )

    async def init_validate(self, dto: InitDto) -> None:
        """POST /api/v1/pow/init/validate: (re)initialise PoW and switch to validating received batches."""
        await self._call(
            "init_validate",
            "POST",
            self._poc_url + INIT_VALIDATE_PATH,
            json_body=dto.model_dump(mode="json"),
            timeout=self.timeouts.command,
        )

    async def validate_batch(self, batch: ProofBatch) -> None:
        """POST /api/v1/pow/validate: queue another participant's sampled batch for recomputation."""
        await self._call(
            "validate_batch",
            "POST",
            self._poc_url + VALIDATE_PATH,
            json_body=batch.model_dump(mode="json"),
            timeout=self.timeouts.command,
        )

    async def inference_up(self, model: str, args: Sequence[str], *, dtype: str = "float16") -> None:
        """POST /api/v1/inference/up: start vLLM with `model` and `args`; returns once it serves."""
        body = InferenceUpRequest(model=model, dtype=dtype, additional_args=list(args))
        resp = await self._call(
            "inference_up",
            "POST",
            self._poc_url + INFERENCE_UP_PATH,
            json_body=body.model_dump(mode="json"),
            timeout=self.timeouts.inference_up,
        )
        # The real node reports a failed start as 200 {"status": "ERROR", "message": ...}; any other
        # body (the reference ignores it) counts as success.
        try:
            answer = resp.json()
        except ValueError:
            return
        if isinstance(answer, dict) and answer.get("status") == "ERROR":
            raise MLNodeCommandFailed(
                str(answer.get("message") or "inference/up reported ERROR"), call="inference_up", url=str(resp.url)
            )

    async def start_training(self, request: StartTrainingRequest) -> None:
        """POST /api/v1/train/start."""
        await self._call(
            "start_training",
            "POST",
            self._poc_url + TRAIN_START_PATH,
            json_body=request.model_dump(mode="json"),
            timeout=self.timeouts.command,
        )

    async def training_status(self) -> bool:
        """GET /api/v1/train/status → whether training runs."""
        resp = await self._call(
            "training_status", "GET", self._poc_url + TRAIN_STATUS_PATH, timeout=self.timeouts.query
        )
        status = _json_object(resp, "training_status").get("status")
        if not isinstance(status, bool):
            raise MLNodeBadResponse(
                f"no boolean 'status' in {resp.text[:200]!r}", call="training_status", url=str(resp.url)
            )
        return status

    # --- inference URL ------------------------------------------------------------------------

    async def inference_health(self) -> None:
        """GET {inference_url}/health; returns if it answered 200, raises the reason otherwise.

        While vLLM is down the real node's inference port refuses connections, so MLNodeUnavailable
        here is the usual "not serving", not a broken node.
        """
        resp = await self._call(
            "inference_health", "GET", self._inference_url + HEALTH_PATH, timeout=self.timeouts.query
        )
        if resp.status_code != 200:
            # The reference accepts exactly 200; a 204 or 202 from some proxy is not vLLM's health.
            raise MLNodeHTTPError(resp.status_code, resp.text, call="inference_health", url=str(resp.url))

    async def is_inference_healthy(self) -> bool:
        """inference_health() as a bool, for the status poller's INFERENCE → FAILED downgrade."""
        try:
            await self.inference_health()
        except (MLNodeUnavailable, MLNodeHTTPError):
            return False
        return True

    # --- plumbing -----------------------------------------------------------------------------

    async def _call(
        self,
        call: str,
        method: str,
        url: str,
        *,
        timeout: float,
        json_body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        http_timeout = httpx.Timeout(timeout, connect=min(self.timeouts.connect, timeout))
        task = asyncio.current_task()
        if task is not None:
            self._in_flight[task] = CallInFlight(call, url, time.monotonic())
        try:
            # httpx's timeouts bound each read or write, not the call; a node that trickles bytes would
            # never trip them, so the call as a whole gets the deadline too.
            async with asyncio.timeout(timeout):
                resp = await self._http.request(method, url, json=json_body, timeout=http_timeout)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise MLNodeTimeout(f"no answer within {timeout:g} s", call=call, url=url) from exc
        except httpx.TransportError as exc:
            raise MLNodeUnavailable(f"{type(exc).__name__}: {exc}", call=call, url=url) from exc
        finally:
            if task is not None:
                self._in_flight.pop(task, None)
        if resp.status_code == 409:
            raise MLNodeConflict(resp.status_code, resp.text, call=call, url=url)
        if not resp.is_success:
            raise MLNodeHTTPError(resp.status_code, resp.text, call=call, url=url)
        return resp


def _checked_base(url: str, what: str) -> str:
    # Rejected here so that a typo in a node's host or port fails at registration with the bad value,
    # not later as a transport error on every call.
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{what} {url!r} is not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{what} {url!r} must be an http(s) URL with a host")
    return url.rstrip("/")


def _json_object(resp: httpx.Response, call: str) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError as exc:
        raise MLNodeBadResponse(f"body is not JSON: {resp.text[:200]!r}", call=call, url=str(resp.url)) from exc
    if not isinstance(body, dict):
        raise MLNodeBadResponse(f"body is not a JSON object: {resp.text[:200]!r}", call=call, url=str(resp.url))
    return body


def _parse(model: type[_M], resp: httpx.Response, call: str) -> _M:
    body = _json_object(resp, call)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise MLNodeBadResponse(
            f"unexpected body {resp.text[:200]!r}: {exc.error_count()} error(s)", call=call, url=str(resp.url)
        ) from exc
