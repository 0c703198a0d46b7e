"""The devnet's genesis: chain id, params, governance models, participants with their keys, authz grants.

Loaded from `config/devnet.yaml` (or the built-in defaults, which that file spells out): the YAML says
how many participants and ML nodes there are and what each node declares; the keys are derived from
`key_seed` and the participant's name, so every run of the same genesis has the same addresses and an
operator can point a separately started daemon at it again and again.

The file is read into pydantic models (`GenesisFile` and its sections), whose fields hold the defaults;
unknown keys are errors, and values are not coerced (no "5" or `true` for an integer). The chain is then
given a `DevnetGenesis` built from them, with derived keys and grants.

Participant 0 is the "own" participant, driven by the real daemon; the others are simulated peers. Each
participant has an account (cold) key and a separate signer (warm) key, and genesis grants the signer
every inference message type through authz, as `inferenced tx inference grant-ml-ops-permissions` does.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from dapi.chain.epochs import EpochParams
from dapi.chain.keys import SigningKey
from dapi.chain.messages import INFERENCE_MSG_TYPE_URLS
from dapi.devnet.schedule.assignment import PocSlotPolicy
from dapi.devnet.schedule.models import GENESIS_MODELS
from dapi.devnet.schedule.records import Decimal, Hardware, Model

__all__ = [
    "DEFAULT_GENESIS_PATH",
    "DEFAULT_SPEC",
    "BandwidthLimits",
    "DevnetGenesis",
    "GenesisError",
    "GenesisFile",
    "Grant",
    "NodeSpec",
    "ParticipantSpec",
    "PeerBehaviour",
    "PocModuleParams",
    "RewardParams",
    "ValidationParams",
    "derive_key",
    "genesis_from_spec",
    "load_genesis",
]

# The repository's config/devnet.yaml; only used when it exists (an installed package has the defaults).
DEFAULT_GENESIS_PATH = Path(__file__).resolve().parents[2] / "config" / "devnet.yaml"


class GenesisError(ValueError):
    """A devnet genesis that cannot start a chain; the one-line message names the file and the key."""


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

    def build(self) -> EpochParams:
        return EpochParams(**self.model_dump())


class PocModuleParams(_Section):
    """The genesis `PocParams` of the inference module (not the ML node's or the broker's PoC params)."""

    default_difficulty: int = 5
    validation_sample_size: _NonNegative = 200
    # The chain prunes a stage's batches and validations this many epochs later (mainnet: 1).
    poc_data_pruning_epoch_threshold: _Positive = 3


class ValidationParams(_Section):
    """The part of the chain's `ValidationParams` the devnet uses."""

    expiration_blocks: int = 20
    timestamp_expiration: int = 60
    timestamp_advance: int = 30


class BandwidthLimits(_Section):
    """The chain's `BandwidthLimitsParams`."""

    estimated_limits_per_block_kb: int = 10752
    kb_per_input_token: _Decimal = Decimal(23, -4)
    kb_per_output_token: _Decimal = Decimal(64, -2)


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


class _ParticipantsSpec(_Section):
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


class GenesisFile(_Section):
    """A devnet genesis file (`config/devnet.yaml`); every key may be left out for its default."""

    chain_id: _Text = "gonka-devnet"
    key_seed: _Text = "dapi-devnet-v1"
    block_time: float = Field(default=0.5, gt=0)
    poc_slot_policy: PocSlotPolicy = Field(default=PocSlotPolicy.WEIGHT, strict=False)
    epoch_params: _EpochParamsSpec = _EpochParamsSpec()
    poc_params: PocModuleParams = PocModuleParams()
    validation_params: ValidationParams = ValidationParams()
    bandwidth_limits_params: BandwidthLimits = BandwidthLimits()
    rewards: RewardParams = RewardParams()
    # The two genesis models of reference/chain-logic.md §14 (mainnet values), as the schedule package has them.
    models: list[_ModelSpec] = Field(default_factory=lambda: [_ModelSpec.of(m) for m in GENESIS_MODELS], min_length=1)
    participants: _ParticipantsSpec = _ParticipantsSpec()
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
        return self


# The defaults config/devnet.yaml spells out (a test keeps the two equal).
DEFAULT_SPEC: dict[str, Any] = GenesisFile().model_dump(mode="json")


# --- the genesis the chain starts from ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One ML node as its participant declares it in hardware diffs (and in the daemon's config)."""

    local_id: str
    models: tuple[str, ...]
    hardware: tuple[Hardware, ...]


@dataclass(frozen=True, slots=True)
class ParticipantSpec:
    """A genesis participant: its keys (derived from the seed and its name), ML nodes and weight."""

    name: str
    own: bool
    account_key: SigningKey
    signer_key: SigningKey
    nodes: tuple[NodeSpec, ...]
    inference_url: str
    genesis_weight: int

    @property
    def address(self) -> str:
        return self.account_key.address

    @property
    def signer_address(self) -> str:
        return self.signer_key.address

    @property
    def account_public_key_b64(self) -> str:
        return base64.b64encode(self.account_key.public_key).decode()

    @property
    def hex_pub_key(self) -> str:
        """How PoC identifies the participant: lowercase hex of the account public key."""
        return self.account_key.public_key.hex()

    @property
    def validator_key(self) -> str:
        # Devnet participants run no consensus node; the account key stands in for the validator key,
        # which formation only needs to be non-empty.
        return self.account_public_key_b64


@dataclass(frozen=True, slots=True)
class Grant:
    """An authz GenericAuthorization: `grantee` may send `msg_type_url` for `granter`."""

    granter: str
    grantee: str
    msg_type_url: str
    expiration_ns: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DevnetGenesis:
    """Everything the devnet chain starts from; participant 0 is the own one, the rest are peers."""

    chain_id: str
    block_time: float
    epoch_params: EpochParams
    poc_params: PocModuleParams
    validation_params: ValidationParams
    bandwidth_limits: BandwidthLimits
    rewards: RewardParams
    poc_slot_policy: PocSlotPolicy
    models: tuple[Model, ...]
    participants: tuple[ParticipantSpec, ...]
    grants: tuple[Grant, ...]
    peer_behaviour: PeerBehaviour

    @property
    def own(self) -> ParticipantSpec:
        return next(p for p in self.participants if p.own)

    @property
    def peers(self) -> tuple[ParticipantSpec, ...]:
        return tuple(p for p in self.participants if not p.own)

    def participant(self, name_or_address: str) -> ParticipantSpec:
        for p in self.participants:
            if name_or_address in (p.name, p.address):
                return p
        raise KeyError(name_or_address)


def derive_key(key_seed: str, participant: str, role: str) -> SigningKey:
    """A secp256k1 key that depends only on (seed, participant name, role): reproducible devnet keys.

    Not for real funds: anyone who knows the seed (it is in the YAML) has the key.
    """
    counter = 0
    while True:
        secret = hashlib.sha256(f"{key_seed}/{participant}/{role}/{counter}".encode()).digest()
        try:
            return SigningKey(secret)
        except ValueError:  # zero or above the group order: astronomically rare, try the next counter
            counter += 1


def _participants(spec: _ParticipantsSpec, key_seed: str) -> tuple[ParticipantSpec, ...]:
    patterns = spec.node_models
    # Node ids repeat across participants on purpose ("node1" everywhere), as on real networks.
    nodes = tuple(
        NodeSpec(local_id=f"node{k}", models=tuple(patterns[(k - 1) % len(patterns)]), hardware=tuple(spec.hardware))
        for k in range(1, spec.nodes_per_participant + 1)
    )
    return tuple(
        ParticipantSpec(
            name=name,
            own=index == 0,
            account_key=derive_key(key_seed, name, "account"),
            signer_key=derive_key(key_seed, name, "signer"),
            nodes=nodes,
            inference_url=f"http://{name}.devnet.invalid:9000",
            genesis_weight=spec.genesis_weight,
        )
        for index, name in enumerate(spec.names())
    )


def _one_line(exc: ValidationError) -> str:
    """The first problem as `key.path: message`; a check across sections names its keys itself."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    kind, got = err["type"], err["input"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "is required"
    elif kind == "model_type":
        message = f"must be a mapping (got {got!r})"
    else:
        message = err["msg"].removeprefix("Value error, ")
        if kind != "value_error" and isinstance(got, str | int | float):
            message += f" (got {got!r})"
    path = ".".join(str(part) for part in err["loc"])
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{path}: {message}{more}" if path else f"{message}{more}"


def genesis_from_spec(spec: Mapping[str, Any], *, source: str = "devnet genesis") -> DevnetGenesis:
    """Build a typed genesis from a spec shaped like config/devnet.yaml (missing keys take the defaults).

    Raises GenesisError `"{source}: {key.path}: {problem}"`.
    """
    try:
        file = GenesisFile.model_validate(dict(spec))
    except ValidationError as exc:
        raise GenesisError(f"{source}: {_one_line(exc)}") from None
    participants = _participants(file.participants, file.key_seed)
    return DevnetGenesis(
        chain_id=file.chain_id,
        block_time=file.block_time,
        epoch_params=file.epoch_params.build(),
        poc_params=file.poc_params,
        validation_params=file.validation_params,
        bandwidth_limits=file.bandwidth_limits_params,
        rewards=file.rewards,
        poc_slot_policy=file.poc_slot_policy,
        models=tuple(m.build() for m in file.models),
        participants=participants,
        grants=tuple(
            Grant(granter=p.address, grantee=p.signer_address, msg_type_url=url)
            for p in participants
            for url in INFERENCE_MSG_TYPE_URLS
        ),
        peer_behaviour=file.peers,
    )


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_genesis(
    path: str | Path | None = None,
    *,
    participants: int | None = None,
    nodes_per_participant: int | None = None,
    block_time: float | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DevnetGenesis:
    """Read a devnet YAML (None: the built-in defaults) and apply the command line's overrides."""
    spec: dict[str, Any] = {}
    source = "devnet genesis"
    if path is not None:
        file = Path(path)
        source = f"devnet genesis {file}"
        try:
            loaded = yaml.safe_load(file.read_text())
        except OSError as exc:
            raise GenesisError(f"{source}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise GenesisError(f"{source}: not valid YAML") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise GenesisError(f"{source}: the top level must be a mapping")
        spec = loaded or {}
    cli: dict[str, Any] = {}
    if participants is not None:
        cli.setdefault("participants", {})["count"] = participants
    if nodes_per_participant is not None:
        cli.setdefault("participants", {})["nodes_per_participant"] = nodes_per_participant
    if block_time is not None:
        cli["block_time"] = block_time
    return genesis_from_spec(_merge(_merge(spec, overrides or {}), cli), source=source)
