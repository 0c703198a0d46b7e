"""The devnet genesis file (`config/devnet.yaml`) as pydantic models whose fields hold the defaults.

Unknown keys are errors and values are not coerced (no "5" or `true` for an integer); checks that span
sections name their keys themselves. `dapi.devnet.genesis` turns a validated file into the genesis the
chain starts from.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from dapi.chain.epochs import EpochParams
from dapi.devnet.schedule.assignment import PocSlotPolicy
from dapi.devnet.schedule.models import GENESIS_MODELS
from dapi.devnet.schedule.records import Decimal, Hardware, Model
from dapi.devnet.schedule.selection import PrePocSelectionParams

__all__ = [
    "DEFAULT_SPEC",
    "DEVNET_THROUGHPUT_PER_NONCE",
    "BandwidthLimits",
    "ClientsSection",
    "DynamicPricingParams",
    "GenesisFile",
    "ParticipantsSection",
    "PeerBehaviour",
    "PocModuleParams",
    "PrePocSelectionSection",
    "RewardParams",
    "ValidationParams",
    "devnet_models",
]


# DESIGN.md §6.1: a simulated node serves its chain throughput, poc_weight x throughput_per_nonce tokens per
# block. Mainnet's figures (1000 and 10000 per nonce) would give a devnet node hundreds of thousands of tokens
# per block; with these, a peer node of 34-56 weight (nonces_per_node 48 and up) serves a few hundred.
DEVNET_THROUGHPUT_PER_NONCE = {"Qwen/QwQ-32B": 5, "Qwen/Qwen2.5-7B-Instruct": 10}


def devnet_models() -> list[Model]:
    """The genesis models of the devnet: the reference's two, with the devnet's throughput per nonce."""
    return [replace(m, throughput_per_nonce=DEVNET_THROUGHPUT_PER_NONCE.get(m.id, m.throughput_per_nonce))
            for m in GENESIS_MODELS]


# --- the file: pydantic models whose fields hold the defaults ----------------------------------------


class _Section(BaseModel):
    """A mapping of the genesis file: unknown keys are errors, values must already have the field's type."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


_Text = Annotated[str, AfterValidator(_non_blank)]
_NonNegative = Annotated[int, Field(ge=0)]
_Positive = Annotated[int, Field(ge=1)]


class _DecimalSpec(_Section):
    value: int
    exponent: int


class _HardwareSpec(_Section):
    type: str
    count: _NonNegative


def _record(spec: type[_Section], record: type[Any]) -> BeforeValidator:
    """Check a mapping against `spec`, then build the `record` dataclass from it (instances pass as they are)."""
    return BeforeValidator(
        lambda raw: raw if isinstance(raw, record) else record(**spec.model_validate(raw).model_dump())
    )


# The schedule package's records, read from YAML mappings such as {value: 23, exponent: -4}.
_Decimal = Annotated[Decimal, _record(_DecimalSpec, Decimal)]
_Hardware = Annotated[Hardware, _record(_HardwareSpec, Hardware)]


class _ModelSpec(_Section):
    """A governance model of genesis (proposed by "genesis")."""

    id: _Text
    units_of_compute_per_token: _NonNegative
    hf_repo: str = ""
    hf_commit: str = ""
    model_args: list[str] = []
    v_ram: _NonNegative
    throughput_per_nonce: _NonNegative
    validation_threshold: _Decimal | None = None

    @classmethod
    def of(cls, model: Model) -> _ModelSpec:
        fields = {name: getattr(model, name) for name in cls.model_fields}
        return cls(**{**fields, "model_args": list(model.model_args)})

    def build(self) -> Model:
        fields = self.model_dump(exclude={"model_args", "validation_threshold"})
        return Model(**fields, proposed_by="genesis", model_args=tuple(self.model_args),
                     validation_threshold=self.validation_threshold)


class _EpochParamsSpec(_Section):
    """DESIGN.md §6: short epochs (PoC at 40, 80, 120, ...); checked as the chain checks EpochParams."""

    epoch_length: int = 40
    epoch_multiplier: int = 1
    epoch_shift: int = 0
    default_unit_of_compute_price: int = 100
    poc_stage_duration: int = 6
    poc_exchange_duration: int = 2
    poc_validation_delay: int = 1
    poc_validation_duration: int = 4
    set_new_validators_delay: int = 2
    inference_validation_cutoff: int = 0
    inference_pruning_epoch_threshold: int = 2
    # Not upstream (DESIGN.md §6.1): the pre-PoC block, this many blocks before each PoC, where the chain
    # measures demand and, under poc_slot_policy demand, re-selects the POC_SLOT flags. 0 = no such block.
    pre_poc_selection_offset: int = 2

    def build(self) -> EpochParams:
        return EpochParams(**self.model_dump())


class PrePocSelectionSection(_Section):
    """The demand-aware pre-PoC selection (`poc_slot_policy: demand`, DESIGN.md §6.1)."""

    headroom: float = Field(default=1.25, ge=1.0)  # strict=True still takes an integer for a float
    min_serving_nodes_per_model: _NonNegative = 1
    max_serving_fraction: float = Field(default=0.5, gt=0.0, le=1.0)

    def build(self) -> PrePocSelectionParams:
        return PrePocSelectionParams(**self.model_dump())


class PocModuleParams(_Section):
    """The genesis `PocParams` of the inference module (not the ML node's or the broker's PoC params)."""

    default_difficulty: int = 5
    validation_sample_size: _NonNegative = 200
    # The chain prunes a stage's batches and validations this many epochs later (mainnet: 1).
    poc_data_pruning_epoch_threshold: _Positive = 3


class ValidationParams(_Section):
    """The part of the chain's `ValidationParams` the devnet uses (defaults: mainnet's)."""

    expiration_blocks: int = 20
    timestamp_expiration: int = 60
    timestamp_advance: int = 30
    # Inference validation (reference/inference.md §4.1, §4.4): sampling and the executor's status.
    false_positive_rate: _Decimal = Decimal(5, -2)
    min_ramp_up_measurements: _NonNegative = 10
    pass_value: _Decimal = Decimal(99, -2)
    min_validation_average: _Decimal = Decimal(1, -2)
    max_validation_average: _Decimal = Decimal(1, 0)
    epochs_to_max: _NonNegative = 30
    full_validation_traffic_cutoff: _NonNegative = 10000
    min_validation_halfway: _Decimal = Decimal(5, -2)
    min_validation_traffic_cutoff: _NonNegative = 100
    miss_percentage_cutoff: _Decimal = Decimal(1, -2)
    miss_requests_penalty: _Decimal = Decimal(1, 0)


class BandwidthLimits(_Section):
    """The chain's `BandwidthLimitsParams`."""

    estimated_limits_per_block_kb: int = 10752
    kb_per_input_token: _Decimal = Decimal(23, -4)
    kb_per_output_token: _Decimal = Decimal(64, -2)


class DynamicPricingParams(_Section):
    """The part of the chain's `DynamicPricingParams` API nodes read: the utilisation window."""

    # Seconds of inference statistics that make up a model's utilisation (mainnet: 60).
    utilization_window_duration: _Positive = 60


class RewardParams(_Section):
    """Settlement: reward_E = initial · e^(decay · (E - genesis_epoch)), split by weight."""

    initial_epoch_reward: _NonNegative = 323_000_000_000_000
    decay_rate: _Decimal = Decimal(-475, -6)
    genesis_epoch: _NonNegative = 1


class PeerBehaviour(_Section):
    """How the simulated peers mine: nonces tried per node per PoC (a node's weight is about 70% of it)."""

    nonces_per_node: _Positive = 48
    r_target: float = 1.4013564660458173
    fraud_threshold: float = 1.0e-7


class ParticipantsSection(_Section):
    """How many participants and ML nodes there are; node k declares node_models[(k-1) mod len]."""

    count: _Positive = 3
    nodes_per_participant: _Positive = 4
    genesis_weight: _Positive = 100
    own_name: _Text = "own"
    peer_name_prefix: str = "peer"
    node_models: list[list[str]] = Field(default=[["Qwen/Qwen2.5-7B-Instruct"], ["Qwen/QwQ-32B"]], min_length=1)
    hardware: list[_Hardware] = [Hardware(type="H100", count=8)]

    def names(self) -> list[str]:
        return [self.own_name, *(f"{self.peer_name_prefix}{i}" for i in range(1, self.count))]


class ClientsSection(_Section):
    """Developer accounts funded at genesis: who sends inference requests (gonka-openai, `--load`).

    Each client gets an account, a participant record (as MsgSubmitNewUnfundedParticipant would make it,
    without a URL or weight) and `balance` ngonka; its key is derived from `key_seed` and its name.
    """

    count: _NonNegative = 1
    name_prefix: _Text = "client"
    balance: _NonNegative = 1_000_000_000_000_000

    def names(self) -> list[str]:
        return [f"{self.name_prefix}{i}" for i in range(1, self.count + 1)]


class GenesisFile(_Section):
    """A devnet genesis file (`config/devnet.yaml`); every key may be left out for its default."""

    chain_id: _Text = "gonka-devnet"
    key_seed: _Text = "dapi-devnet-v1"
    block_time: float = Field(default=0.5, gt=0)
    poc_slot_policy: PocSlotPolicy = Field(default=PocSlotPolicy.WEIGHT, strict=False)
    epoch_params: _EpochParamsSpec = _EpochParamsSpec()
    pre_poc_selection: PrePocSelectionSection = PrePocSelectionSection()
    poc_params: PocModuleParams = PocModuleParams()
    validation_params: ValidationParams = ValidationParams()
    bandwidth_limits_params: BandwidthLimits = BandwidthLimits()
    dynamic_pricing_params: DynamicPricingParams = DynamicPricingParams()
    rewards: RewardParams = RewardParams()
    # The two genesis models of reference/chain-logic.md §14 (mainnet values, as the schedule package has them)
    # but for throughput_per_nonce (DEVNET_THROUGHPUT_PER_NONCE).
    models: list[_ModelSpec] = Field(default_factory=lambda: [_ModelSpec.of(m) for m in devnet_models()],
                                     min_length=1)
    participants: ParticipantsSection = ParticipantsSection()
    clients: ClientsSection = ClientsSection()
    peers: PeerBehaviour = PeerBehaviour()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        # Each message names its key: these checks span sections, so pydantic has no field to put them on.
        self.epoch_params.build().validate()
        model_ids = [m.id for m in self.models]
        if len(set(model_ids)) != len(model_ids):
            raise ValueError("models: duplicate model id")
        # Nodes may declare non-governance models on purpose (they land in the overflow list), but a typo
        # in the devnet's own file is more likely: only ids of the genesis registry are accepted here.
        unknown = sorted({m for ids in self.participants.node_models for m in ids} - set(model_ids))
        if unknown:
            raise ValueError(f"participants.node_models: not genesis models: {', '.join(unknown)}")
        names = self.participants.names()
        if len(set(names)) != len(names):
            raise ValueError(f"participants.own_name: {names[0]!r} collides with a peer name")
        if set(names) & set(self.clients.names()):
            raise ValueError("clients.name_prefix: a client name collides with a participant name")
        return self


# The defaults config/devnet.yaml spells out (a test keeps the two equal).
DEFAULT_SPEC: dict[str, Any] = GenesisFile().model_dump(mode="json")
