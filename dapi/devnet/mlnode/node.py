"""One simulated ML node: the real node's state machine and its batch Sender, without a GPU.

A node named `n1` lives under `/nodes/n1` of its server (see `dapi.devnet.mlnode.app` for the routes).
Its state follows the real node's management API (reference/http.md §6.1): STOPPED, POW (IDLE, GENERATE
or VALIDATE), INFERENCE or TRAIN.

Like the real node's Sender (§6.2), every `batch_interval` a generating node POSTs one batch to
`<init url>/generated` with the nonces of its nonce space (node_id + k·node_count) whose distance
(`pocmath.sim_dist`) is below r_target, and a validating node POSTs a ValidatedBatch to
`<init url>/validated` for every batch it was given through `/api/v1/pow/validate`. Failed POSTs are
kept and retried each tick while the node stays in that phase, as the real Sender does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field

from dapi.devnet.mlnode.capacity import NodeCapacity, tokens_per_second_of
from dapi.devnet.mlnode.pocmath import sim_dist, validate_proof_batch
from dapi.logs import get_logger
from dapi.mlnodeclient.models import InferenceUpRequest, MLNodeState, ProofBatch, ValidatedBatch

if TYPE_CHECKING:
    from dapi.devnet.mlnode.faults import FaultSpec
    from dapi.devnet.mlnode.server import SimMLNodeServer

log = get_logger(__name__)

NODES_PREFIX = "/nodes"
DEFAULT_BATCH_INTERVAL = 5.0  # the real Sender's period
MAX_PENDING_BATCHES = 1000
MAX_RECORDED_CALLS = 10_000
MAX_KEPT_BATCHES = 1000


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
    """What a node in POW state does: waits (IDLE), generates nonces, or validates others' batches."""

    IDLE = "IDLE"
    GENERATE = "GENERATE"
    VALIDATE = "VALIDATE"


_POW_STATUS_OF_PHASE = {PowPhase.IDLE: "IDLE", PowPhase.GENERATE: "GENERATING", PowPhase.VALIDATE: "VALIDATING"}


# --- one simulated node --------------------------------------------------------------------------


@dataclass(eq=False)
class SimNode:
    """The state of one simulated ML node. Read it freely in tests; change it through the HTTP API.

    Made by `SimMLNodeServer.add_node`; the other fields are its state, starting STOPPED.

    Args:
        name: the node's name, its path segment `/nodes/<name>` on the server.
        server: the server hosting it; gives the batch interval, the nonces per batch, the HTTP client
            for batch callbacks and the owner of the batch loop's task.
        load_delay: seconds an inference/up takes before the node serves.
        inference_up_error: when set, the next inference/up answers the real node's failure shape
            (200 `{"status": "ERROR", "message": ...}`) with this message, and the field clears.
        capacity: its request slots and token rate (`SimMLNodeServer.add_node` builds it).
        wrong_output: serve answers of a wrong model (self-consistent, but an honest re-run with
            `enforced_str` does not reproduce their logprobs), for validation to catch; the node's own
            validation re-runs stay honest.
    """

    name: str
    server: SimMLNodeServer = field(repr=False)
    load_delay: float = 0.0
    inference_up_error: str | None = None
    capacity: NodeCapacity = field(default_factory=NodeCapacity)
    wrong_output: bool = False

    state: MLNodeState = MLNodeState.STOPPED
    pow_phase: PowPhase | None = None
    pow_init: PowInitRequest | None = None
    model: str | None = None
    dtype: str | None = None
    args: list[str] = field(default_factory=list)
    inference_ready: bool = False
    serving_run: int = 0  # counts the times a loaded model went away; answers in progress end then
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
            "wrong_output": self.wrong_output,
            "capacity": self.capacity.snapshot(),
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

    def set_throughput(self, tokens_per_block: float, block_time: float) -> None:
        """Serve at the chain's figure for this node (`MLNodeInfo.throughput`, tokens per block)."""
        self.capacity.configure(tokens_per_second=tokens_per_second_of(tokens_per_block, block_time))

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
        if self.inference_ready:
            self.serving_run += 1  # like a vLLM process ending: requests it was serving are cut off
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
        self._task = self.server.tasks.spawn(self._sender_loop(), name=f"sim-mlnode-{self.name}")

    def cancel_loop(self) -> asyncio.Task[None] | None:
        """Cancel the batch loop; returns the task so the caller may await its end.

        The server's task owner keeps the cancelled task until it has ended, so `server.stop()` waits for it.
        """
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        return task

    async def _sender_loop(self) -> None:
        # A crash ends the loop (the real Sender dies with its process); the task owner logs it, and
        # `loop_error` shows it in `/sim/nodes`.
        try:
            await self._send_batches()
        except Exception as exc:
            self.loop_error = repr(exc)
            raise

    async def _send_batches(self) -> None:
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
                    log.warning("sim ML node: batch POST failed; kept for retry", node=self.name, error=error)
                self.last_post_error = error
                return
            self.last_post_error = None
            pending.pop(0)
            posted.append(batch)


def _append_bounded(pending: list[Any], item: Any) -> None:
    pending.append(item)
    if len(pending) > MAX_PENDING_BATCHES:
        del pending[0]

