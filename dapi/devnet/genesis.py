"""The devnet's genesis: chain id, params, governance models, participants with their keys, authz grants.

Loaded from `config/devnet.yaml` (or the built-in defaults, which that file spells out): the YAML says
how many participants and ML nodes there are and what each node declares; the keys are derived from
`key_seed` and the participant's name, so every run of the same genesis has the same addresses and an
operator can point a separately started daemon at it again and again.

The file is read into the pydantic models of `dapi.devnet.genesis_file`, whose fields hold the defaults;
the chain is then given a `DevnetGenesis` built from them, with derived keys and grants.

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
from typing import Any

import yaml
from pydantic import ValidationError

from dapi.chain.epochs import EpochParams
from dapi.chain.keys import SigningKey
from dapi.chain.messages import INFERENCE_MSG_TYPE_URLS
from dapi.devnet.genesis_file import (
    DEFAULT_SPEC,
    BandwidthLimits,
    ClientsSection,
    DynamicPricingParams,
    GenesisFile,
    ParticipantsSection,
    PeerBehaviour,
    PocModuleParams,
    RewardParams,
    ValidationParams,
)
from dapi.devnet.schedule.assignment import PocSlotPolicy
from dapi.devnet.schedule.records import Hardware, Model
from dapi.devnet.schedule.selection import PrePocSelectionParams

__all__ = [
    "DEFAULT_GENESIS_PATH",
    "DEFAULT_SPEC",
    "BandwidthLimits",
    "ClientSpec",
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
class ClientSpec:
    """A developer account funded at genesis: it signs inference requests and pays for them.

    Compared by value (the private key bytes), so the same genesis read twice gives equal clients.
    """

    name: str
    private_key: bytes
    address: str
    public_key: bytes
    balance: int

    @classmethod
    def derive(cls, key_seed: str, name: str, balance: int) -> ClientSpec:
        key = derive_key(key_seed, name, "account")
        return cls(name=name, private_key=key.private_key_bytes, address=key.address, public_key=key.public_key,
                   balance=balance)

    @property
    def key(self) -> SigningKey:
        return SigningKey(self.private_key)


@dataclass(frozen=True, slots=True)
class Grant:
    """An authz GenericAuthorization: `grantee` may send `msg_type_url` for `granter`."""

    granter: str
    grantee: str
    msg_type_url: str
    expiration_ns: int | None = None

    def live_at(self, now_ns: int) -> bool:
        """Not expired at `now_ns` (a grant without an expiration never expires)."""
        return self.expiration_ns is None or self.expiration_ns > now_ns


@dataclass(frozen=True, slots=True, kw_only=True)
class DevnetGenesis:
    """Everything the devnet chain starts from; participant 0 is the own one, the rest are peers."""

    chain_id: str
    block_time: float
    epoch_params: EpochParams
    poc_params: PocModuleParams
    validation_params: ValidationParams
    bandwidth_limits: BandwidthLimits
    dynamic_pricing: DynamicPricingParams
    rewards: RewardParams
    poc_slot_policy: PocSlotPolicy
    pre_poc_selection: PrePocSelectionParams
    models: tuple[Model, ...]
    participants: tuple[ParticipantSpec, ...]
    grants: tuple[Grant, ...]
    peer_behaviour: PeerBehaviour
    clients: tuple[ClientSpec, ...] = ()

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


def _participants(spec: ParticipantsSection, key_seed: str) -> tuple[ParticipantSpec, ...]:
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


def _clients(spec: ClientsSection, key_seed: str) -> tuple[ClientSpec, ...]:
    return tuple(ClientSpec.derive(key_seed, name, spec.balance) for name in spec.names())


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
        dynamic_pricing=file.dynamic_pricing_params,
        rewards=file.rewards,
        poc_slot_policy=file.poc_slot_policy,
        pre_poc_selection=file.pre_poc_selection.build(),
        models=tuple(m.build() for m in file.models),
        participants=participants,
        grants=tuple(
            Grant(granter=p.address, grantee=p.signer_address, msg_type_url=url)
            for p in participants
            for url in INFERENCE_MSG_TYPE_URLS
        ),
        peer_behaviour=file.peers,
        clients=_clients(file.clients, file.key_seed),
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
