"""The devnet's genesis: chain id, params, governance models, participants with their keys, authz grants.

Loaded from `config/devnet.yaml` (or the built-in defaults, which that file spells out): the YAML says
how many participants and ML nodes there are and what each node declares; the keys are derived from
`key_seed` and the participant's name, so every run of the same genesis has the same addresses and an
operator can point a separately started daemon at it again and again.

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

from dapi.chain.epochs import EpochParams
from dapi.chain.keys import SigningKey
from dapi.chain.messages import INFERENCE_MSG_TYPE_URLS
from dapi.devnet.schedule.assignment import PocSlotPolicy
from dapi.devnet.schedule.records import Decimal, Hardware, Model

__all__ = [
    "DEFAULT_GENESIS_PATH",
    "DEFAULT_SPEC",
    "BandwidthLimits",
    "DevnetGenesis",
    "GenesisError",
    "Grant",
    "NodeSpec",
    "ParticipantSpec",
    "PeerBehaviour",
    "PocParams",
    "RewardParams",
    "ValidationParams",
    "derive_key",
    "genesis_from_spec",
    "load_genesis",
]

# The repository's config/devnet.yaml; only used when it exists (an installed package has the defaults).
DEFAULT_GENESIS_PATH = Path(__file__).resolve().parents[2] / "config" / "devnet.yaml"

# The defaults config/devnet.yaml spells out (a test keeps the two equal).
DEFAULT_SPEC: dict[str, Any] = {
    "chain_id": "gonka-devnet",
    "key_seed": "dapi-devnet-v1",
    "block_time": 0.5,
    "poc_slot_policy": "weight",
    "epoch_params": {
        "epoch_length": 40,
        "epoch_multiplier": 1,
        "epoch_shift": 0,
        "default_unit_of_compute_price": 100,
        "poc_stage_duration": 6,
        "poc_exchange_duration": 2,
        "poc_validation_delay": 1,
        "poc_validation_duration": 4,
        "set_new_validators_delay": 2,
        "inference_validation_cutoff": 0,
        "inference_pruning_epoch_threshold": 2,
    },
    "poc_params": {"default_difficulty": 5, "validation_sample_size": 200, "poc_data_pruning_epoch_threshold": 3},
    "validation_params": {"expiration_blocks": 20, "timestamp_expiration": 60, "timestamp_advance": 30},
    "bandwidth_limits_params": {
        "estimated_limits_per_block_kb": 10752,
        "kb_per_input_token": {"value": 23, "exponent": -4},
        "kb_per_output_token": {"value": 64, "exponent": -2},
    },
    "rewards": {
        "initial_epoch_reward": 323_000_000_000_000,
        "decay_rate": {"value": -475, "exponent": -6},
        "genesis_epoch": 1,
    },
    "models": [
        {
            "id": "Qwen/QwQ-32B",
            "units_of_compute_per_token": 1000,
            "hf_repo": "Qwen/QwQ-32B",
            "hf_commit": "976055f8c83f394f35dbd3ab09a285a984907bd0",
            "model_args": ["--quantization", "fp8", "--kv-cache-dtype", "fp8"],
            "v_ram": 80,
            "throughput_per_nonce": 1000,
            "validation_threshold": {"value": 98, "exponent": -2},
        },
        {
            "id": "Qwen/Qwen2.5-7B-Instruct",
            "units_of_compute_per_token": 100,
            "hf_repo": "Qwen/Qwen2.5-7B-Instruct",
            "hf_commit": "a09a35458c702b33eeacc393d103063234e8bc28",
            "model_args": ["--quantization", "fp8"],
            "v_ram": 24,
            "throughput_per_nonce": 10000,
            "validation_threshold": {"value": 98, "exponent": -2},
        },
    ],
    "participants": {
        "count": 3,
        "nodes_per_participant": 4,
        "genesis_weight": 100,
        "own_name": "own",
        "peer_name_prefix": "peer",
        "node_models": [["Qwen/Qwen2.5-7B-Instruct"], ["Qwen/QwQ-32B"]],
        "hardware": [{"type": "H100", "count": 8}],
    },
    "peers": {"nonces_per_node": 48, "r_target": 1.4013564660458173, "fraud_threshold": 1.0e-7},
}


class GenesisError(ValueError):
    """A devnet genesis that cannot start a chain; the message names the key."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One ML node as its participant declares it in hardware diffs (and in the daemon's config)."""

    local_id: str
    models: tuple[str, ...]
    hardware: tuple[Hardware, ...]


@dataclass(frozen=True, slots=True)
class ParticipantSpec:
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
class PocParams:
    default_difficulty: int = 5
    validation_sample_size: int = 200
    poc_data_pruning_epoch_threshold: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationParams:
    expiration_blocks: int = 20
    timestamp_expiration: int = 60
    timestamp_advance: int = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class BandwidthLimits:
    estimated_limits_per_block_kb: int
    kb_per_input_token: Decimal
    kb_per_output_token: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class RewardParams:
    initial_epoch_reward: int
    decay_rate: Decimal
    genesis_epoch: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerBehaviour:
    """How the simulated peers mine: nonces tried per node per PoC (a node's weight is about 70% of it)."""

    nonces_per_node: int
    r_target: float
    fraud_threshold: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DevnetGenesis:
    chain_id: str
    block_time: float
    epoch_params: EpochParams
    poc_params: PocParams
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


# --- parsing ---------------------------------------------------------------------------------------


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _section(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = spec.get(key)
    if not isinstance(value, Mapping):
        raise GenesisError(f"{key}: must be a mapping")
    return value


def _int(section: Mapping[str, Any], key: str, where: str, *, minimum: int | None = None) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise GenesisError(f"{where}.{key}: must be an integer (got {value!r})")
    if minimum is not None and value < minimum:
        raise GenesisError(f"{where}.{key}: must be at least {minimum} (got {value})")
    return value


def _float(section: Mapping[str, Any], key: str, where: str) -> float:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GenesisError(f"{where}.{key}: must be a number (got {value!r})")
    return float(value)


def _decimal(value: Any, where: str) -> Decimal:
    if not isinstance(value, Mapping):
        raise GenesisError(f"{where}: must be a mapping {{value, exponent}}")
    return Decimal(_int(value, "value", where), _int(value, "exponent", where))


def _model(raw: Any, index: int) -> Model:
    where = f"models[{index}]"
    if not isinstance(raw, Mapping):
        raise GenesisError(f"{where}: must be a mapping")
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not model_id.strip():
        raise GenesisError(f"{where}.id: must be a non-empty string")
    args = raw.get("model_args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise GenesisError(f"{where}.model_args: must be a list of strings")
    threshold = raw.get("validation_threshold")
    return Model(
        id=model_id,
        proposed_by=str(raw.get("proposed_by", "genesis")),
        units_of_compute_per_token=_int(raw, "units_of_compute_per_token", where, minimum=0),
        hf_repo=str(raw.get("hf_repo", "")),
        hf_commit=str(raw.get("hf_commit", "")),
        model_args=tuple(args),
        v_ram=_int(raw, "v_ram", where, minimum=0),
        throughput_per_nonce=_int(raw, "throughput_per_nonce", where, minimum=0),
        validation_threshold=None if threshold is None else _decimal(threshold, f"{where}.validation_threshold"),
    )


def _hardware(raw: Any, where: str) -> tuple[Hardware, ...]:
    if not isinstance(raw, list):
        raise GenesisError(f"{where}: must be a list of {{type, count}}")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            raise GenesisError(f"{where}[{i}]: must be a mapping with a string type")
        out.append(Hardware(type=entry["type"], count=_int(entry, "count", f"{where}[{i}]", minimum=0)))
    return tuple(out)


def _participants(
    section: Mapping[str, Any], key_seed: str, model_ids: set[str]
) -> tuple[ParticipantSpec, ...]:
    where = "participants"
    count = _int(section, "count", where, minimum=1)
    per = _int(section, "nodes_per_participant", where, minimum=1)
    weight = _int(section, "genesis_weight", where, minimum=1)
    own_name = str(section.get("own_name", "own"))
    prefix = str(section.get("peer_name_prefix", "peer"))
    patterns = section.get("node_models")
    if not isinstance(patterns, list) or not patterns or not all(
        isinstance(p, list) and all(isinstance(m, str) for m in p) for p in patterns
    ):
        raise GenesisError(f"{where}.node_models: must be a non-empty list of model id lists")
    # Nodes may declare non-governance models on purpose (they land in the overflow list), but a typo
    # in the devnet's own file is more likely: only ids of the genesis registry are accepted here.
    unknown = sorted({m for p in patterns for m in p} - model_ids)
    if unknown:
        raise GenesisError(f"{where}.node_models: not genesis models: {', '.join(unknown)}")
    hardware = _hardware(section.get("hardware", []), f"{where}.hardware")
    out = []
    for index in range(count):
        name = own_name if index == 0 else f"{prefix}{index}"
        # Node ids repeat across participants on purpose ("node1" everywhere), as on real networks.
        nodes = tuple(
            NodeSpec(local_id=f"node{k}", models=tuple(patterns[(k - 1) % len(patterns)]), hardware=hardware)
            for k in range(1, per + 1)
        )
        out.append(ParticipantSpec(
            name=name,
            own=index == 0,
            account_key=derive_key(key_seed, name, "account"),
            signer_key=derive_key(key_seed, name, "signer"),
            nodes=nodes,
            inference_url=f"http://{name}.devnet.invalid:9000",
            genesis_weight=weight,
        ))
    if len({p.name for p in out}) != len(out):
        raise GenesisError(f"{where}: own_name {own_name!r} collides with a peer name")
    return tuple(out)


def genesis_from_spec(spec: Mapping[str, Any]) -> DevnetGenesis:
    """Build a typed genesis from a spec shaped like config/devnet.yaml (missing keys take the defaults)."""
    full = _merge(DEFAULT_SPEC, spec)
    chain_id = full.get("chain_id")
    if not isinstance(chain_id, str) or not chain_id.strip():
        raise GenesisError("chain_id: must be a non-empty string")
    key_seed = str(full.get("key_seed", ""))
    if not key_seed:
        raise GenesisError("key_seed: must be a non-empty string")
    block_time = _float(full, "block_time", "genesis")
    if block_time <= 0:
        raise GenesisError("block_time: must be greater than 0")
    try:
        policy = PocSlotPolicy(str(full.get("poc_slot_policy")))
    except ValueError:
        allowed = ", ".join(p.value for p in PocSlotPolicy)
        raise GenesisError(f"poc_slot_policy: must be one of {allowed}") from None

    ep = _section(full, "epoch_params")
    unknown_params = set(ep) - set(EpochParams.__dataclass_fields__)
    if unknown_params:
        raise GenesisError(f"epoch_params: unknown keys {', '.join(sorted(unknown_params))}")
    epoch_params = EpochParams(**{k: _int(ep, k, "epoch_params") for k in ep})
    try:
        epoch_params.validate()
    except ValueError as exc:
        raise GenesisError(str(exc)) from None

    pp = _section(full, "poc_params")
    vp = _section(full, "validation_params")
    bw = _section(full, "bandwidth_limits_params")
    rw = _section(full, "rewards")
    peers = _section(full, "peers")

    raw_models = full.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise GenesisError("models: must be a non-empty list")
    models = tuple(_model(m, i) for i, m in enumerate(raw_models))
    if len({m.id for m in models}) != len(models):
        raise GenesisError("models: duplicate model id")

    participants = _participants(_section(full, "participants"), key_seed, {m.id for m in models})
    grants = tuple(
        Grant(granter=p.address, grantee=p.signer_address, msg_type_url=url)
        for p in participants
        for url in INFERENCE_MSG_TYPE_URLS
    )
    return DevnetGenesis(
        chain_id=chain_id,
        block_time=block_time,
        epoch_params=epoch_params,
        poc_params=PocParams(
            default_difficulty=_int(pp, "default_difficulty", "poc_params"),
            validation_sample_size=_int(pp, "validation_sample_size", "poc_params", minimum=0),
            poc_data_pruning_epoch_threshold=_int(pp, "poc_data_pruning_epoch_threshold", "poc_params", minimum=1),
        ),
        validation_params=ValidationParams(
            expiration_blocks=_int(vp, "expiration_blocks", "validation_params"),
            timestamp_expiration=_int(vp, "timestamp_expiration", "validation_params"),
            timestamp_advance=_int(vp, "timestamp_advance", "validation_params"),
        ),
        bandwidth_limits=BandwidthLimits(
            estimated_limits_per_block_kb=_int(bw, "estimated_limits_per_block_kb", "bandwidth_limits_params"),
            kb_per_input_token=_decimal(bw.get("kb_per_input_token"), "bandwidth_limits_params.kb_per_input_token"),
            kb_per_output_token=_decimal(bw.get("kb_per_output_token"),
                                         "bandwidth_limits_params.kb_per_output_token"),
        ),
        rewards=RewardParams(
            initial_epoch_reward=_int(rw, "initial_epoch_reward", "rewards", minimum=0),
            decay_rate=_decimal(rw.get("decay_rate"), "rewards.decay_rate"),
            genesis_epoch=_int(rw, "genesis_epoch", "rewards", minimum=0),
        ),
        poc_slot_policy=policy,
        models=models,
        participants=participants,
        grants=grants,
        peer_behaviour=PeerBehaviour(
            nonces_per_node=_int(peers, "nonces_per_node", "peers", minimum=1),
            r_target=_float(peers, "r_target", "peers"),
            fraud_threshold=_float(peers, "fraud_threshold", "peers"),
        ),
    )


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
    if path is not None:
        file = Path(path)
        try:
            loaded = yaml.safe_load(file.read_text())
        except OSError as exc:
            raise GenesisError(f"devnet genesis {file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise GenesisError(f"devnet genesis {file}: not valid YAML") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise GenesisError(f"devnet genesis {file}: the top level must be a mapping")
        spec = loaded or {}
    cli: dict[str, Any] = {}
    if participants is not None:
        cli.setdefault("participants", {})["count"] = participants
    if nodes_per_participant is not None:
        cli.setdefault("participants", {})["nodes_per_participant"] = nodes_per_participant
    if block_time is not None:
        cli["block_time"] = block_time
    return genesis_from_spec(_merge(_merge(spec, overrides or {}), cli))
