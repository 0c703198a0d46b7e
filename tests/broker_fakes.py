"""Shared helpers of the broker tests: an in-memory chain, a collecting tx sink, a chain driver, waits.

The chain side is a fake (the devnet chain is another component); the block dispatcher is the real one;
the ML side in these tests is always the real SimMLNodeServer on loopback.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message
from waiting import wait_for

from dapi.broker import Broker, NodeStatus
from dapi.chain.epochs import Epoch, EpochContext, EpochParams, Phase
from dapi.chain.errors import ChainError, ChainNotFound
from dapi.chain.rpc import ChainNodeStatus
from dapi.chain.view import ChainView
from dapi.config import BrokerConfig, Hardware, ModelArgs, NodeConfig
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.event_listener.dispatcher import Dispatcher, ReconcileCadence
from dapi.event_listener.subscription import NewBlock
from dapi.gen.inference.inference.epoch_group_data_pb2 import EpochGroupData, MLNodeInfo, ValidationWeight
from dapi.gen.inference.inference.epoch_pb2 import Epoch as EpochProto
from dapi.gen.inference.inference.hardware_node_pb2 import HardwareNodes
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.gen.inference.inference.params_pb2 import EpochParams as EpochParamsProto
from dapi.gen.inference.inference.params_pb2 import Params
from dapi.gen.inference.inference.query_pb2 import QueryEpochInfoResponse
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitHardwareDiff

_M = TypeVar("_M", bound=Message)

__all__ = ["wait_for"]  # re-exported: the broker tests import it from here

PARTICIPANT = "gonka1ownparticipantaddressxxxxxxxxxxxxxxx"
OTHER_PARTICIPANT = "gonka1someoneelsexxxxxxxxxxxxxxxxxxxxxxxxx"
# Mixed case on purpose: InitDto must carry it lowercased.
PUBKEY_HEX = "02A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5F60718293A4B5C6D7E8F90"
CALLBACK_URL = "http://127.0.0.1:9"  # nothing listens: the sim nodes' batch POSTs just fail

MODEL_A = "Qwen/Qwen2.5-7B-Instruct"
MODEL_B = "Qwen/QwQ-32B"

# Small epochs (the devnet's): PoC generate [P, P+4), wind-down to P+7 (end of generation at P+6),
# validate [P+7, P+10), wind-down to P+11 = end of validation, set-new-validators at P+13.
PARAMS = EpochParams(
    epoch_length=40,
    epoch_shift=0,
    poc_stage_duration=6,
    poc_exchange_duration=2,
    poc_validation_delay=1,
    poc_validation_duration=4,
    set_new_validators_delay=2,
)

FAST = BrokerConfig(
    status_poll_interval=0.05,
    hardware_sync_interval=0.05,
    job_timeout=5.0,
    retry_backoff_max=0.05,
)


def block_hash(height: int) -> str:
    return hashlib.sha256(f"block-{height}".encode()).hexdigest().upper()


def gov_model(model_id: str, args: Sequence[str] = (), **extra: Any) -> Model:
    return Model(id=model_id, model_args=list(args), proposed_by="gov", units_of_compute_per_token=100, **extra)


def ml_node(node_id: str, pre_poc: bool = True, poc_slot: bool = False, weight: int = 10) -> MLNodeInfo:
    return MLNodeInfo(node_id=node_id, poc_weight=weight, timeslot_allocation=[pre_poc, poc_slot])


class FakeChain:
    """An in-memory ChainReader: governance models, epoch groups, hardware nodes, block hashes.

    `calls` counts every query by method name; `failures[method]` holds exceptions raised (and consumed)
    by the next calls of that method.
    """

    def __init__(self, governance: Iterable[Model] = ()) -> None:
        self.governance: list[Model] = list(governance)
        self.groups: dict[tuple[int, str], EpochGroupData] = {}
        self.current_epoch = 0
        self.hardware: dict[str, HardwareNodes] = {}
        self.calls: Counter[str] = Counter()
        self.failures: dict[str, list[Exception]] = {}
        # The chain's position, for the block dispatcher's status and EpochInfo (see ChainDriver).
        self.height = 0
        self.latest = Epoch(0, 0)
        self.params = PARAMS

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        pending = self.failures.get(method)
        if pending:
            raise pending.pop(0)

    def fail_next(self, method: str, *errors: Exception) -> None:
        self.failures.setdefault(method, []).extend(errors)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    # --- ChainReader ---

    async def models_all(self) -> list[Model]:
        self._enter("models_all")
        return [_copy(m) for m in self.governance]

    async def epoch_group_data(self, epoch_index: int, model_id: str = "") -> EpochGroupData:
        self._enter("epoch_group_data")
        group = self.groups.get((epoch_index, model_id))
        if group is None:
            raise ChainNotFound(f"epoch group {epoch_index}/{model_id!r} not found")
        return _copy(group)

    async def current_epoch_group_data(self) -> EpochGroupData:
        self._enter("current_epoch_group_data")
        group = self.groups.get((self.current_epoch, ""))
        return _copy(group) if group is not None else EpochGroupData()

    async def hardware_nodes(self, participant: str) -> HardwareNodes:
        self._enter("hardware_nodes")
        return _copy(self.hardware.get(participant, HardwareNodes(participant=participant)))

    async def block_hash(self, height: int) -> str:
        self._enter("block_hash")
        return block_hash(height)

    # --- what the block dispatcher reads (dispatcher.ChainTip, dispatcher.EpochSource) ---

    async def status(self) -> ChainNodeStatus:
        return ChainNodeStatus(network="fake", latest_block_height=self.height,
                             latest_block_hash=block_hash(self.height), catching_up=False)

    async def epoch_info(self, height: int = 0) -> QueryEpochInfoResponse:
        self._enter("epoch_info")
        if height not in (0, self.height):
            raise AssertionError("the driver's blocks are never replayed: no EpochInfo at a past height")
        return QueryEpochInfoResponse(
            block_height=self.height,
            params=Params(epoch_params=EpochParamsProto(**dataclasses.asdict(self.params))),
            latest_epoch=EpochProto(index=self.latest.index, poc_start_block_height=self.latest.poc_start_block_height),
        )

    # --- building chain state ---

    def empty_epoch(self, epoch_index: int, price: int = 0) -> None:
        """The parent group the chain creates at an epoch's PoC start: no sub-groups yet."""
        self.groups.setdefault((epoch_index, ""), EpochGroupData(epoch_index=epoch_index, unit_of_compute_price=price))

    def form_epoch(
        self,
        epoch_index: int,
        own: Mapping[str, Sequence[MLNodeInfo]],
        *,
        others: Mapping[str, Mapping[str, Sequence[MLNodeInfo]]] | None = None,
        price: int = 1000,
    ) -> None:
        """Sub-groups per model: `own` maps model id → the own participant's ML nodes in it."""
        members: dict[str, dict[str, Sequence[MLNodeInfo]]] = {}
        for model_id, nodes in own.items():
            members.setdefault(model_id, {})[PARTICIPANT] = nodes
        for participant, per_model in (others or {}).items():
            for model_id, nodes in per_model.items():
                members.setdefault(model_id, {})[participant] = nodes
        gov = {m.id: m for m in self.governance}
        for model_id, by_member in members.items():
            self.groups[(epoch_index, model_id)] = EpochGroupData(
                epoch_index=epoch_index,
                model_id=model_id,
                model_snapshot=gov.get(model_id, Model(id=model_id)),
                validation_weights=[
                    ValidationWeight(member_address=p, weight=10, ml_nodes=list(n)) for p, n in by_member.items()
                ],
            )
        self.groups[(epoch_index, "")] = EpochGroupData(
            epoch_index=epoch_index, unit_of_compute_price=price, sub_group_models=list(members)
        )

    def set_price(self, epoch_index: int, price: int) -> None:
        """What the real chain does at set-new-validators: write the price into the epoch's parent group."""
        self.groups[(epoch_index, "")].unit_of_compute_price = price

    def apply_hardware_diff(self, msg: MsgSubmitHardwareDiff) -> None:
        """What the chain does with an accepted diff: remove by local_id, then upsert, sorted by local_id."""
        current = {n.local_id: n for n in self.hardware.get(msg.creator, HardwareNodes()).hardware_nodes}
        for node in msg.removed:
            current.pop(node.local_id, None)
        for node in msg.newOrModified:
            current[node.local_id] = node
        self.hardware[msg.creator] = HardwareNodes(
            participant=msg.creator, hardware_nodes=[current[k] for k in sorted(current)]
        )


def _copy(msg: _M) -> _M:
    clone = type(msg)()
    clone.CopyFrom(msg)
    return clone


@dataclass
class ListTxSink:
    msgs: list[Message] = field(default_factory=list)
    chain: FakeChain | None = None

    async def submit(self, msg: Message) -> None:
        self.msgs.append(msg)
        if self.chain is not None and isinstance(msg, MsgSubmitHardwareDiff):
            self.chain.apply_hardware_diff(msg)


def sim_node_config(
    sim: SimMLNodeServer,
    name: str,
    models: Mapping[str, Sequence[str]] | None = None,
    *,
    max_concurrent: int = 10,
    version: str = "",
    hardware: Sequence[tuple[str, int]] = (("H100", 8),),
) -> NodeConfig:
    """A node entry for simulated node `name` (added to the sim if it is not there yet)."""
    if sim.find_node(name) is None:
        sim.add_node(name)
    segment = sim.segment(name)
    return NodeConfig(
        id=name,
        host=sim.host,
        poc_port=sim.port,
        poc_segment=segment,
        inference_port=sim.port,
        inference_segment=segment,
        max_concurrent=max_concurrent,
        models={m: ModelArgs(args=list(a)) for m, a in (models if models is not None else {MODEL_A: []}).items()},
        hardware=[Hardware(type=t, count=c) for t, c in hardware],
        version=version,
    )


def make_broker(
    chain: FakeChain,
    data_dir: Path,
    *,
    settings: BrokerConfig = FAST,
    tx_sink: ListTxSink | None = None,
    **kwargs: Any,
) -> Broker:
    kwargs.setdefault("reconcile_interval", 0.05)
    kwargs.setdefault("retry_backoff_base", 0.01)
    kwargs.setdefault("poc_callback_url", CALLBACK_URL)
    return Broker(
        chain=chain,
        participant_address=PARTICIPANT,
        participant_pubkey_hex=PUBKEY_HEX,
        settings=settings,
        data_dir=data_dir,
        tx_sink=tx_sink,
        **kwargs,
    )


def paths(sim: SimMLNodeServer, name: str, path: str) -> int:
    """How many calls simulated node `name` received on `path` (relative to its segment)."""
    return sum(1 for c in sim.calls(name) if c.path == path)


STOP = "/api/v1/stop"
INIT_GENERATE = "/api/v1/pow/init/generate"
INIT_VALIDATE = "/api/v1/pow/init/validate"
INFERENCE_UP = "/api/v1/inference/up"


def ml_calls(sim: SimMLNodeServer, name: str) -> dict[str, int]:
    """Counts of the four state-changing calls a node received."""
    return {
        "stop": paths(sim, name, STOP),
        "init_generate": paths(sim, name, INIT_GENERATE),
        "init_validate": paths(sim, name, INIT_VALIDATE),
        "inference_up": paths(sim, name, INFERENCE_UP),
    }


def status_of(broker: Broker, node_id: str) -> tuple[NodeStatus, NodeStatus]:
    view = broker.node(node_id)
    assert view is not None
    return view.state.intended_status, view.state.current_status


async def settle(broker: Broker, *, timeout: float = 10.0) -> None:
    """Run a reconcile pass and wait until no node has a job in flight."""
    await broker.reconcile_now()
    await wait_for(
        lambda: all(r.state.reconcile_info is None for r in broker.nodes()), timeout=timeout, what="jobs to finish"
    )


DEFAULT_CADENCE = ReconcileCadence()  # the daemon's: InferenceUpAll every 5 blocks, PoC commands every block


class ChainDriver:
    """Plays the chain block by block and hands each block to the real block dispatcher.

    Per height: the chain's EndBlock stages (formation of the upcoming epoch at the end of its
    validation, switch of the effective epoch at set-new-validators, a new epoch at PoC start), then
    `dapi.event_listener.dispatcher.Dispatcher.process`, as the block follower calls it. A chain error
    while processing (the epoch data could not be read) is counted in `epoch_data_errors`; the follower
    would retry that block, the driver goes on to the next. `formation(epoch_index)` gives the own
    nodes' allocation of a forming epoch (model id → ML nodes).
    """

    def __init__(
        self,
        broker: Broker,
        chain: FakeChain,
        formation: Callable[[int], Mapping[str, Sequence[MLNodeInfo]]],
        *,
        params: EpochParams = PARAMS,
        settle_each_block: bool = True,
        cadence: ReconcileCadence = DEFAULT_CADENCE,
    ) -> None:
        self.broker = broker
        self.chain = chain
        self.formation = formation
        self.settle_each_block = settle_each_block
        self.epoch_data_errors = 0
        chain.params = params
        chain.empty_epoch(0)
        self.dispatcher = Dispatcher(rpc=chain, query=chain, broker=broker, view=ChainView(), seeds=None,
                                     validator=None, cadence=cadence)

    @property
    def height(self) -> int:
        return self.chain.height

    @height.setter
    def height(self, height: int) -> None:
        """Jump: the chain is at `height` without the daemon having seen the blocks before it."""
        self.chain.height = height

    @property
    def context(self) -> EpochContext:
        return EpochContext.for_epoch(self.chain.latest, self.chain.params)

    def phase(self) -> Phase:
        return self.context.phase_at(self.height)

    async def block(self) -> None:
        h = self.chain.height + 1
        ctx = self.context
        if ctx.is_end_of_poc_validation(h):
            self.chain.form_epoch(ctx.epoch_index, self.formation(ctx.epoch_index))
        if ctx.is_set_new_validators(h):
            self.chain.current_epoch = ctx.epoch_index
        if ctx.is_next_poc_start(h):
            self.chain.latest = Epoch(ctx.epoch_index + 1, h)
            self.chain.empty_epoch(self.chain.latest.index)
        self.chain.height = h
        try:
            await self.dispatcher.process(NewBlock(h, block_hash(h)), False)
        except ChainError:
            self.epoch_data_errors += 1
        if self.settle_each_block:
            await settle(self.broker)

    async def run_to(self, height: int) -> None:
        while self.height < height:
            await self.block()

    async def run_until_phase(self, phase: Phase) -> None:
        while True:
            await self.block()
            if self.phase() is phase:
                return
