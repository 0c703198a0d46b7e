"""The broker's data: node statuses, per-node state, the epoch state it acts on, and their JSON.

The JSON of `node_response_json` is the admin API's `GET /admin/v1/nodes` item (reference/http.md §3.3):
intended/current status as names, `reconcile_info.status` as a number, chain types in the chain's own
JSON shape (gogoproto tags: zero fields omitted, 64-bit integers as numbers, enums as numbers).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any, TypeVar

from google.protobuf.message import Message

from dapi.chain.epochs import Epoch, EpochContext, EpochParams, Phase
from dapi.chain.gojson import go_json
from dapi.config import NodeConfig
from dapi.gen.inference.inference.epoch_group_data_pb2 import MLNodeInfo
from dapi.gen.inference.inference.model_pb2 import Model

_M = TypeVar("_M", bound=Message)

__all__ = [
    "AdminState",
    "EpochState",
    "Node",
    "NodeDiagnostics",
    "NodeResponse",
    "NodeState",
    "NodeStatus",
    "PocStatus",
    "ReconcileInfo",
    "node_response_json",
    "rfc3339nano",
]


class NodeStatus(IntEnum):
    """The chain's HardwareNodeStatus; used for both the intended and the current status of a node."""

    UNKNOWN = 0
    INFERENCE = 1
    POC = 2
    TRAINING = 3
    STOPPED = 4
    FAILED = 5


class PocStatus(StrEnum):
    """The PoC sub-status of a node: generating nonces, validating batches, or IDLE (not in PoC)."""

    IDLE = "IDLE"
    GENERATING = "GENERATING"
    VALIDATING = "VALIDATING"


@dataclass(slots=True)
class AdminState:
    """An operator's enable/disable decision and the latest epoch index at which it was made."""

    enabled: bool = True
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class ReconcileInfo:
    """The target a job in flight was dispatched for.

    `job_id` is ours: a result is accepted only from the job this record names, so neither a cancelled
    job nor one of an earlier A→B→A flip of the intent can set the status (reference/broker.md §8.17).
    """

    status: NodeStatus
    poc_status: PocStatus
    job_id: int


@dataclass(slots=True)
class NodeState:
    """What the broker wants a node to do (intended) and what it last knew it does (current)."""

    intended_status: NodeStatus = NodeStatus.UNKNOWN
    current_status: NodeStatus = NodeStatus.UNKNOWN
    reconcile_info: ReconcileInfo | None = None
    poc_intended_status: PocStatus = PocStatus.IDLE
    poc_current_status: PocStatus = PocStatus.IDLE
    lock_count: int = 0
    failure_reason: str = ""
    status_timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    admin_state: AdminState = field(default_factory=AdminState)
    epoch_models: dict[str, Model] = field(default_factory=dict)
    epoch_ml_nodes: dict[str, MLNodeInfo] = field(default_factory=dict)
    # The model our own inference/up loaded; None when unknown (not serving, or brought up before a restart).
    served_model: str | None = None

    def set_current(self, status: NodeStatus, poc_status: PocStatus, *, at: datetime | None = None) -> None:
        self.current_status = status
        self.poc_current_status = poc_status
        self.status_timestamp = at or datetime.now(UTC)
        if status is not NodeStatus.INFERENCE:
            self.served_model = None

    def copy(self) -> NodeState:
        """A snapshot the caller may keep: nothing in it is shared with the live state."""
        clone = copy.copy(self)
        clone.admin_state = AdminState(self.admin_state.enabled, self.admin_state.epoch)
        clone.epoch_models = {k: _copy_proto(v) for k, v in self.epoch_models.items()}
        clone.epoch_ml_nodes = {k: _copy_proto(v) for k, v in self.epoch_ml_nodes.items()}
        return clone


def _copy_proto(msg: _M) -> _M:
    clone = type(msg)()
    clone.CopyFrom(msg)
    return clone


@dataclass(frozen=True, slots=True)
class Node:
    """A registered ML node: its config (a private deep copy) and the NodeNum the broker gave it."""

    config: NodeConfig
    node_num: int

    @property
    def id(self) -> str:
        return self.config.id

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "host": c.host,
            "inference_segment": c.inference_segment,
            "inference_port": c.inference_port,
            "poc_segment": c.poc_segment,
            "poc_port": c.poc_port,
            "models": {model_id: {"args": list(args.args)} for model_id, args in c.models.items()},
            "id": c.id,
            "max_concurrent": c.max_concurrent,
            "node_num": self.node_num,
            "hardware": [{"type": h.type, "count": h.count} for h in c.hardware],
            "version": c.version,
        }


@dataclass(frozen=True, slots=True)
class NodeResponse:
    """One item of the node list: a node and a snapshot of its state."""

    node: Node
    state: NodeState


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDiagnostics:
    """Why a node does what it does: its failed jobs in a row, when it is retried, the last phase decision.

    ``retry_in`` is seconds until the next attempt after a failure (None: no retry waiting); ``decision``
    and ``reason`` are the last phase command's word for the node and its why (None before any command);
    ``epoch_data_epoch`` is the epoch whose allocations the nodes hold.
    """

    failures: int
    retry_in: float | None
    decision: str | None
    reason: str | None
    epoch_data_epoch: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochState:
    """The chain position the broker acts on, set by the block dispatcher (reference/broker.md §1.10).

    `latest_epoch_index` is the most recently started epoch: during PoC it is already the upcoming one.
    """

    latest_epoch_index: int
    poc_start_block_height: int
    epoch_params: EpochParams
    block_height: int
    block_hash: str = ""
    phase: Phase
    synced: bool = True

    @classmethod
    def at_height(
        cls, epoch: Epoch, params: EpochParams, height: int, *, block_hash: str = "", synced: bool = True
    ) -> EpochState:
        """The state at `height` with `epoch` as the latest epoch, its phase computed as the chain does."""
        ctx = EpochContext.for_epoch(epoch, params)
        return cls(
            latest_epoch_index=epoch.index,
            poc_start_block_height=epoch.poc_start_block_height,
            epoch_params=params,
            block_height=height,
            block_hash=block_hash,
            phase=ctx.phase_at(height),
            synced=synced,
        )

    @property
    def context(self) -> EpochContext:
        return EpochContext(self.latest_epoch_index, self.poc_start_block_height, self.epoch_params)

    @property
    def effective_epoch_index(self) -> int:
        """The epoch whose group the chain's CurrentEpochGroupData answers with at this height.

        The latest epoch becomes effective at its set-new-validators height; before that (its PoC, its
        validation, the model-loading blocks after formation) the previous epoch is still effective.
        """
        if self.latest_epoch_index == 0:
            return 0
        if self.block_height >= self.context.set_new_validators:
            return self.latest_epoch_index
        return self.latest_epoch_index - 1


def rfc3339nano(ts: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: fraction digits only as many as needed, none for whole seconds."""
    ts = ts.astimezone(UTC)
    frac = f"{ts.microsecond:06d}".rstrip("0")
    return ts.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def node_response_json(response: NodeResponse) -> dict[str, Any]:
    """`{"node": {...}, "state": {...}}` exactly as reference/http.md §3.3."""
    st = response.state
    state: dict[str, Any] = {
        "intended_status": st.intended_status.name,
        "current_status": st.current_status.name,
    }
    if st.reconcile_info is not None:
        state["reconcile_info"] = {
            "status": int(st.reconcile_info.status),
            "poc_status": st.reconcile_info.poc_status.value,
            "training_task_id": 0,
        }
    state.update(
        {
            "poc_intended_status": st.poc_intended_status.value,
            "poc_current_status": st.poc_current_status.value,
            "lock_count": st.lock_count,
            "failure_reason": st.failure_reason,
            "status_timestamp": rfc3339nano(st.status_timestamp),
            "admin_state": {"enabled": st.admin_state.enabled, "epoch": st.admin_state.epoch},
            "epoch_models": {k: go_json(v) for k, v in st.epoch_models.items()},
            "epoch_ml_nodes": {k: go_json(v) for k, v in st.epoch_ml_nodes.items()},
        }
    )
    return {"node": response.node.to_json(), "state": state}
