"""Node jobs: the ML node call sequences of reference/broker.md §4, each a small class with `run()`.

A job carries everything it needs (model and args, InitDto) from the moment it is built, so running it
reads no broker state. Every job is idempotent: it looks at the node first and does nothing if the node
is already where the job would take it.

Deliberate differences from the reference:
* a failed job reports PoC status IDLE, not "" (a failed node is not generating);
* StartPoC also stops the node when the state query failed (the reference skips the stop then and
  sends init/generate to a node that may be serving inference);
* InferenceUp loads the model of `choose_inference_model` (fix 2) and does not take a healthy
  INFERENCE node as done when we know it serves another model.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from dapi.broker.rules import ModelChoice
from dapi.broker.state import NodeStatus, PocStatus
from dapi.mlnodeclient import InitDto, MLNodeClient, MLNodeConflict, MLNodeError, MLNodeState, PowState

__all__ = [
    "InferenceUpJob",
    "InitValidateJob",
    "NodeJob",
    "NodeResult",
    "StartPocJob",
    "StopJob",
]


@dataclass(frozen=True, slots=True)
class NodeResult:
    """What a job found out. `final_status` None means unknown (the job was cancelled part-way)."""

    succeeded: bool
    final_status: NodeStatus | None
    final_poc_status: PocStatus = PocStatus.IDLE
    error: str = ""
    served_model: str | None = None

    @classmethod
    def ok(cls, status: NodeStatus, poc: PocStatus = PocStatus.IDLE, *, served_model: str | None = None) -> NodeResult:
        return cls(True, status, poc, served_model=served_model)

    @classmethod
    def failed(cls, error: str) -> NodeResult:
        return cls(False, NodeStatus.FAILED, PocStatus.IDLE, error)

    @classmethod
    def cancelled(cls, error: str = "cancelled") -> NodeResult:
        return cls(False, None, PocStatus.IDLE, error)


class NodeJob(abc.ABC):
    """One unit of work for a node's worker. `job_id` ties its result to the dispatch that made it."""

    target: NodeStatus
    poc_target: PocStatus = PocStatus.IDLE

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id

    @abc.abstractmethod
    async def run(self, client: MLNodeClient) -> NodeResult:
        """Do the calls; ML node errors become a failed result, cancellation propagates."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(job_id={self.job_id})"


async def _state_or_none(client: MLNodeClient) -> MLNodeState | None:
    try:
        return await client.node_state()
    except MLNodeError:
        return None


async def _pow_state_or_none(client: MLNodeClient) -> PowState | None:
    try:
        return (await client.pow_status()).status
    except MLNodeError:
        return None


class StopJob(NodeJob):
    """Stop whatever the ML node runs; the job for a node whose intended status is STOPPED."""

    target = NodeStatus.STOPPED

    async def run(self, client: MLNodeClient) -> NodeResult:
        try:
            await client.stop()
        except MLNodeError as exc:
            return NodeResult.failed(str(exc))
        return NodeResult.ok(NodeStatus.STOPPED)


class InferenceUpJob(NodeJob):
    """Serve `choice` (None: nothing to serve, which fails after stopping the node, as the reference)."""

    target = NodeStatus.INFERENCE

    def __init__(self, job_id: int, choice: ModelChoice | None, *, known_served_model: str | None = None) -> None:
        super().__init__(job_id)
        self.choice = choice
        self.known_served_model = known_served_model

    async def run(self, client: MLNodeClient) -> NodeResult:
        wanted = self.choice.model_id if self.choice else None
        try:
            if await _state_or_none(client) is MLNodeState.INFERENCE and await client.is_inference_healthy():
                # We cannot ask the node which model it serves; trust it unless we know it loaded another.
                if self.known_served_model is None or self.known_served_model == wanted:
                    return NodeResult.ok(NodeStatus.INFERENCE, served_model=self.known_served_model or wanted)
            await client.stop()
            if self.choice is None:
                return NodeResult.failed("no model to serve: no epoch models and no configured governance models")
            await client.inference_up(self.choice.model_id, list(self.choice.args))
        except MLNodeError as exc:
            return NodeResult.failed(str(exc))
        return NodeResult.ok(NodeStatus.INFERENCE, served_model=self.choice.model_id)


class StartPocJob(NodeJob):
    """Bring the node to PoC generation with ``dto``, or confirm that it is already generating.

    ``assume_stopped`` (the node was last seen STOPPED) sends ``init/generate`` straight away: one request
    instead of two when every node starts PoC at once.
    """

    target = NodeStatus.POC
    poc_target = PocStatus.GENERATING

    def __init__(self, job_id: int, dto: InitDto, *, assume_stopped: bool = False) -> None:
        super().__init__(job_id)
        self.dto = dto
        self.assume_stopped = assume_stopped

    async def run(self, client: MLNodeClient) -> NodeResult:
        try:
            if self.assume_stopped:
                # The node was last seen STOPPED: go straight to init, one request instead of two at the
                # moment a thousand nodes start together. An ML node that is not stopped answers 409,
                # and then the full sequence below finds out what it is doing.
                try:
                    await client.init_generate(self.dto)
                    return NodeResult.ok(NodeStatus.POC, PocStatus.GENERATING)
                except MLNodeConflict:
                    pass
            state = await _state_or_none(client)
            if state is MLNodeState.POW and await _pow_state_or_none(client) is PowState.GENERATING:
                return NodeResult.ok(NodeStatus.POC, PocStatus.GENERATING)
            if state is not MLNodeState.STOPPED:
                await client.stop()
            await client.init_generate(self.dto)
        except MLNodeError as exc:
            return NodeResult.failed(str(exc))
        return NodeResult.ok(NodeStatus.POC, PocStatus.GENERATING)


class InitValidateJob(NodeJob):
    """Switch the node to PoC validation with ``dto`` (in place from PoW, else after a stop), or confirm it."""

    target = NodeStatus.POC
    poc_target = PocStatus.VALIDATING

    def __init__(self, job_id: int, dto: InitDto) -> None:
        super().__init__(job_id)
        self.dto = dto

    async def run(self, client: MLNodeClient) -> NodeResult:
        try:
            state = await _state_or_none(client)
            if state is MLNodeState.POW and await _pow_state_or_none(client) is PowState.VALIDATING:
                return NodeResult.ok(NodeStatus.POC, PocStatus.VALIDATING)
            # A node in PoW (whatever its sub-status) switches to validation in place.
            if state not in (MLNodeState.STOPPED, MLNodeState.POW):
                await client.stop()
            await client.init_validate(self.dto)
        except MLNodeError as exc:
            return NodeResult.failed(str(exc))
        return NodeResult.ok(NodeStatus.POC, PocStatus.VALIDATING)
