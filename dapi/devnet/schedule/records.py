"""Plain records of the chain-side schedule, mirroring the chain's protobuf messages field for field.

They are deliberately not the generated protobuf classes: the schedule rules stay pure and hashable,
and the devnet converts at its wire boundary with a 1:1 field mapping (reference/chain-io.md §5,
reference/chain-logic.md §1). Repeated fields are tuples so every record is immutable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

__all__ = [
    "LEGACY_NODE_ID",
    "ActiveParticipant",
    "Decimal",
    "EpochGroupData",
    "Hardware",
    "HardwareNode",
    "HardwareNodeStatus",
    "HardwareNodes",
    "MLNodeInfo",
    "Model",
    "ModelMLNodes",
    "ParticipantRecord",
    "PoCBatch",
    "PoCValidation",
    "RandomSeed",
    "SeedSignature",
    "TimeslotType",
    "ValidationWeight",
]

# A batch without node_id (an API node that predates per-node tracking) is counted under this id.
LEGACY_NODE_ID = ""


@dataclass(frozen=True, slots=True)
class Decimal:
    """The chain's `Decimal{value, exponent}`: value x 10^exponent."""

    value: int
    exponent: int

    def as_float(self) -> float:
        return self.value * 10.0**self.exponent


@dataclass(frozen=True, slots=True, kw_only=True)
class Model:
    """A governance model (`inference.inference.Model`)."""

    id: str
    proposed_by: str = ""
    units_of_compute_per_token: int = 0
    context_window: int = 0
    quantization: str = ""
    coins_per_input_token: int = 0
    coins_per_output_token: int = 0
    hf_repo: str = ""
    hf_commit: str = ""
    model_args: tuple[str, ...] = ()
    v_ram: int = 0
    throughput_per_nonce: int = 0
    validation_threshold: Decimal | None = None


class HardwareNodeStatus(IntEnum):
    """A hardware node's status as its participant declares it (`HardwareNodeStatus`)."""

    UNKNOWN = 0
    INFERENCE = 1
    POC = 2
    TRAINING = 3
    STOPPED = 4
    FAILED = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Hardware:
    """One kind of accelerator in a hardware node and how many of it (`Hardware`)."""

    type: str
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareNode:
    """One ML node as its participant declared it (`HardwareNode`); `models` in the node's own order."""

    local_id: str
    status: HardwareNodeStatus = HardwareNodeStatus.UNKNOWN
    models: tuple[str, ...] = ()
    hardware: tuple[Hardware, ...] = ()
    host: str = ""
    port: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareNodes:
    """A participant's hardware record; `hardware_nodes` is kept sorted by local_id."""

    participant: str
    hardware_nodes: tuple[HardwareNode, ...] = ()


class TimeslotType(IntEnum):
    """Index into `MLNodeInfo.timeslot_allocation`."""

    PRE_POC_SLOT = 0
    POC_SLOT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class MLNodeInfo:
    """One ML node in an epoch group (`MLNodeInfo`): PoC weight, throughput and timeslot allocation."""

    node_id: str
    throughput: int = 0
    poc_weight: int = 0
    timeslot_allocation: tuple[bool, ...] = ()

    @property
    def is_active_during_poc(self) -> bool:
        """POC_SLOT = true: the node keeps serving inference during the next PoC instead of mining."""
        return len(self.timeslot_allocation) > TimeslotType.POC_SLOT and self.timeslot_allocation[TimeslotType.POC_SLOT]

    def with_poc_slot(self, poc_slot: bool) -> MLNodeInfo:
        return replace(self, timeslot_allocation=(True, poc_slot))


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelMLNodes:
    """A participant's ML nodes for one model (`ModelMLNodes`): the list at the model's index."""

    ml_nodes: tuple[MLNodeInfo, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RandomSeed:
    """The seed signature a participant submitted for an epoch (`RandomSeed`); without one it is not formed."""

    participant: str
    epoch_index: int
    signature: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveParticipant:
    """A member of a formed epoch: `models[i]` ↔ `ml_nodes[i]`, plus one overflow list at the end if any."""

    index: str
    validator_key: str = ""
    weight: int = 0
    inference_url: str = ""
    models: tuple[str, ...] = ()
    seed: RandomSeed | None = None
    ml_nodes: tuple[ModelMLNodes, ...] = ()

    def nodes_for_model(self, model_id: str) -> tuple[MLNodeInfo, ...]:
        if model_id not in self.models:
            return ()
        return self.ml_nodes[self.models.index(model_id)].ml_nodes

    @property
    def overflow_nodes(self) -> tuple[MLNodeInfo, ...]:
        """Nodes with no governance model: they serve nothing, so they always mine."""
        if len(self.ml_nodes) > len(self.models):
            return self.ml_nodes[len(self.models)].ml_nodes
        return ()

    @property
    def all_nodes(self) -> tuple[MLNodeInfo, ...]:
        return tuple(node for group in self.ml_nodes for node in group.ml_nodes)


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantRecord:
    """What formation needs from the chain's `Participant` record."""

    address: str
    validator_key: str = ""
    inference_url: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PoCBatch:
    """Nonces and distances one ML node submitted for a PoC stage (`PoCBatch`); an empty `node_id` is a legacy batch."""

    participant_address: str
    poc_stage_start_block_height: int
    received_at_block_height: int = 0
    nonces: tuple[int, ...] = ()
    dist: tuple[float, ...] = ()
    batch_id: str = ""
    node_id: str = LEGACY_NODE_ID


@dataclass(frozen=True, slots=True, kw_only=True)
class PoCValidation:
    """One validator's vote on one participant's PoC for a stage (`PoCValidation`)."""

    participant_address: str
    validator_participant_address: str
    poc_stage_start_block_height: int
    validated_at_block_height: int = 0
    nonces: tuple[int, ...] = ()
    dist: tuple[float, ...] = ()
    received_dist: tuple[float, ...] = ()
    r_target: float = 0.0
    fraud_threshold: float = 0.0
    n_invalid: int = 0
    probability_honest: float = 0.0
    fraud_detected: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedSignature:
    """A member's seed signature as its epoch group records it (`SeedSignature`)."""

    member_address: str
    signature: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationWeight:
    """A member of an epoch group (`ValidationWeight`); in a model sub-group, with its ML nodes there."""

    member_address: str
    weight: int = 0
    reputation: int = 0
    ml_nodes: tuple[MLNodeInfo, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochGroupData:
    """An epoch's parent group (`model_id == ""`) or one model sub-group (`EpochGroupData`).

    `validation_params` (field 12) is left to the devnet, which copies the chain params at the switch.
    """

    poc_start_block_height: int
    epoch_index: int
    model_id: str = ""
    epoch_group_id: int = 0
    epoch_policy: str = ""
    effective_block_height: int = 0
    last_block_height: int = 0
    member_seed_signatures: tuple[SeedSignature, ...] = ()
    validation_weights: tuple[ValidationWeight, ...] = ()
    unit_of_compute_price: int = 0
    number_of_requests: int = 0
    previous_epoch_requests: int = 0
    total_weight: int = 0
    sub_group_models: tuple[str, ...] = ()
    model_snapshot: Model | None = None
    total_throughput: int = 0
    # Parent group only, indexed like sub_group_models (DESIGN.md §6.1; not in the upstream proto).
    expected_throughput_vector: tuple[int, ...] = ()
    real_throughput_vector: tuple[int, ...] = ()

    def weight_of(self, member_address: str) -> ValidationWeight | None:
        for vw in self.validation_weights:
            if vw.member_address == member_address:
                return vw
        return None
