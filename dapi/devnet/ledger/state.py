"""The inference module's store: what the message handlers write and the end-block stages read and write.

One `InferenceState` per ledger. The handlers (`handlers`, `inference_msgs`) and the end-block stages
(`endblock`) are functions over it, and the ledger answers its read queries from it. Accounts, grants,
blocks and the mempool are not here: they belong to the ledger itself (x/auth, x/authz and the node
around the app). Bank balances are (x/bank, `ngonka` only), with the inference module's account
holding the escrow of running inferences and the coins executors earned until settlement.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import bech32

from dapi.chain.epochs import Epoch, EpochParams
from dapi.chain.keys import ADDRESS_PREFIX
from dapi.devnet.genesis import DevnetGenesis
from dapi.devnet.ledger.inferences import (
    DEFAULT_PER_TOKEN_PRICE,
    Inference,
    ParticipantWork,
    ValidationDetails,
)
from dapi.devnet.ledger.records import ClaimRecord, EpochReport, History, InferenceStat, TxEvent
from dapi.devnet.schedule.formation import FormationInput
from dapi.devnet.schedule.models import ModelRegistry
from dapi.devnet.schedule.records import (
    ActiveParticipant,
    EpochGroupData,
    HardwareNodes,
    ParticipantRecord,
    PoCBatch,
    PoCValidation,
    RandomSeed,
    ValidationWeight,
)
from dapi.devnet.schedule.settlement import RewardShare
from dapi.devnet.schedule.throughput import CompletedInference

__all__ = ["GENESIS_REPUTATION", "INFERENCE_MODULE_ADDRESS", "InferenceState", "module_address"]

GENESIS_REPUTATION = 1


def module_address(name: str) -> str:
    """A module account's address, as the SDK derives it: the first 20 bytes of sha256(name)."""
    data = bech32.convertbits(hashlib.sha256(name.encode()).digest()[:20], 8, 5)
    assert data is not None
    return bech32.bech32_encode(ADDRESS_PREFIX, data)


# Holds the escrow of running inferences and what executors earned until their epoch is settled.
INFERENCE_MODULE_ADDRESS = module_address("inference")

_LATEST = "latest"
_EFFECTIVE = "effective"

# (PoC stage start height, participant, batch id) and (stage, participant, validator).
BatchKey = tuple[int, str, str]
ValidationKey = tuple[int, str, str]


@dataclass(slots=True, eq=False)
class InferenceState:
    """The inference module's store (participants, hardware, epochs and groups, PoC data, seeds, rewards).

    Build it with `InferenceState.from_genesis(genesis)`. `registry` is the governance model registry
    (replaced whole by a governance change); `epochs`, the parent and sub-groups (`groups`, keyed by
    (epoch index, model id), "" for the parent) and the latest/effective epoch pointers keep their
    history by height.
    """

    genesis: DevnetGenesis
    registry: ModelRegistry
    participants: dict[str, ParticipantRecord] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    # The public keys that may sign for a participant (its account key, its signer key).
    participant_keys: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    hardware: dict[str, HardwareNodes] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)

    epochs: dict[int, Epoch] = field(default_factory=lambda: {0: Epoch(0, 0)})
    epoch_pointer: History[str, int] = field(default_factory=History)
    groups: History[tuple[int, str], EpochGroupData] = field(default_factory=History)
    group_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    active: dict[int, tuple[ActiveParticipant, ...]] = field(default_factory=lambda: {0: ()})
    formation_inputs: dict[int, FormationInput] = field(default_factory=dict)
    # The price a formed epoch gets when it becomes effective (the chain writes it only then).
    pending_prices: dict[int, int] = field(default_factory=dict)
    reports: dict[int, EpochReport] = field(default_factory=dict)
    rewards: dict[int, dict[str, RewardShare]] = field(default_factory=dict)

    batches: dict[BatchKey, PoCBatch] = field(default_factory=dict)
    validations: dict[ValidationKey, PoCValidation] = field(default_factory=dict)
    seeds: dict[tuple[int, str], RandomSeed] = field(default_factory=dict)
    claims: list[ClaimRecord] = field(default_factory=list)

    # The inference path (reference/inference.md §2): records by id, timeouts by expiration height,
    # validation details by (epoch, id), the ids each validator validated per epoch (EpochGroupValidations),
    # each participant's work, the current per-token price of a model (none: the chain's default).
    inferences: dict[str, Inference] = field(default_factory=dict)
    timeouts: dict[int, list[str]] = field(default_factory=dict)
    validation_details: dict[tuple[int, str], ValidationDetails] = field(default_factory=dict)
    epoch_validations: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    work: dict[str, ParticipantWork] = field(default_factory=dict)
    model_prices: dict[str, int] = field(default_factory=dict)
    settled_work: dict[int, dict[str, int]] = field(default_factory=dict)
    # Developer statistics, one entry per inference id (rewritten on every write of the inference).
    inference_stats: dict[str, InferenceStat] = field(default_factory=dict)
    # What the current block's EndBlock emitted (the ledger puts them into the block).
    end_block_events: list[TxEvent] = field(default_factory=list)

    @classmethod
    def from_genesis(cls, genesis: DevnetGenesis) -> InferenceState:
        """Participants, their keys and epoch 0 (every participant a validator with its genesis weight)."""
        state = cls(genesis=genesis, registry=ModelRegistry.of(genesis.models))
        for p in genesis.participants:
            state.participants[p.address] = ParticipantRecord(
                address=p.address, validator_key=p.validator_key, inference_url=p.inference_url
            )
            state.names[p.address] = p.name
            state.participant_keys[p.address] = (p.account_key.public_key, p.signer_key.public_key)
        for c in genesis.clients:
            # As MsgSubmitNewUnfundedParticipant would leave it: a record, no URL, no weight.
            state.participants[c.address] = ParticipantRecord(address=c.address)
            state.names[c.address] = c.name
            state.participant_keys[c.address] = (c.public_key,)
            state.balances[c.address] = c.balance
        members = tuple(
            ValidationWeight(member_address=p.address, weight=p.genesis_weight, reputation=GENESIS_REPUTATION)
            for p in sorted(genesis.participants, key=lambda p: p.address)
        )
        state.groups.set((0, ""), EpochGroupData(
            poc_start_block_height=0,
            epoch_index=0,
            epoch_group_id=next(state.group_ids),
            validation_weights=members,
            total_weight=sum(m.weight for m in members),
            unit_of_compute_price=state.params.default_unit_of_compute_price,
        ), 0)
        state.set_latest_epoch(0, 0)
        state.set_effective_epoch(0, 0)
        return state

    @property
    def params(self) -> EpochParams:
        return self.genesis.epoch_params

    # --- epochs ------------------------------------------------------------------------------------

    def set_latest_epoch(self, index: int, height: int) -> None:
        self.epoch_pointer.set(_LATEST, index, height)

    def set_effective_epoch(self, index: int, height: int) -> None:
        self.epoch_pointer.set(_EFFECTIVE, index, height)

    def latest_epoch(self, height: int | None = None) -> Epoch:
        """The chain's GetLatestEpoch: the upcoming epoch once its PoC started, else the effective one."""
        index = self.epoch_pointer.get(_LATEST, height)
        return self.epochs[index if index is not None else 0]

    def effective_epoch(self, height: int | None = None) -> Epoch:
        index = self.epoch_pointer.get(_EFFECTIVE, height)
        return self.epochs[index if index is not None else 0]

    def upcoming_epoch(self) -> Epoch | None:
        return self.epochs.get(self.effective_epoch().index + 1)

    def epoch_groups(self, epoch_index: int) -> tuple[EpochGroupData, tuple[EpochGroupData, ...]] | None:
        """The parent group of an epoch and its model sub-groups (in sub_group_models order)."""
        parent = self.groups.get((epoch_index, ""))
        if parent is None:
            return None
        subs = tuple(g for m in parent.sub_group_models if (g := self.groups.get((epoch_index, m))) is not None)
        return parent, subs

    # --- undo ------------------------------------------------------------------------------------------

    def snapshot(self) -> InferenceState:
        """A copy of every container of the store, for `restore`.

        Records are immutable, and containers nest at most a list in a dict, so copying the containers
        two levels deep is a full copy of what a handler can change (genesis, the registry, which is
        replaced whole, and the group id counter, which only EndBlock draws from, are shared).
        """
        copied = copy.copy(self)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                value = {k: list(v) if isinstance(v, list) else v for k, v in value.items()}
            elif isinstance(value, list):
                value = list(value)
            elif isinstance(value, History):
                value = value.copy()
            setattr(copied, f.name, value)
        return copied

    def restore(self, snapshot: InferenceState) -> None:
        """Put back everything `snapshot` holds (a failed tx of several messages is undone this way)."""
        for f in fields(self):
            setattr(self, f.name, getattr(snapshot, f.name))

    # --- bank and the inference path ----------------------------------------------------------------

    def balance(self, address: str) -> int:
        return self.balances.get(address, 0)

    def transfer(self, sender: str, recipient: str, amount: int) -> None:
        """Move `amount` ngonka (the caller checked the sender can pay)."""
        if amount <= 0:
            return
        self.balances[sender] = self.balance(sender) - amount
        self.balances[recipient] = self.balance(recipient) + amount

    def work_of(self, address: str) -> ParticipantWork:
        return self.work.get(address) or ParticipantWork()

    def per_token_price(self, model: str) -> int:
        """The price an inference of `model` locks now (`ModelCurrentPriceMap`, else the chain's default)."""
        return self.model_prices.get(model, DEFAULT_PER_TOKEN_PRICE)

    def completed_by_model(self, epoch_index: int) -> dict[str, tuple[int, int]]:
        """(requests, prompt + completion tokens) per model of the inferences completed in an epoch."""
        totals: dict[str, tuple[int, int]] = {}
        for (epoch, inference_id), details in self.validation_details.items():
            inference = self.inferences.get(inference_id)
            if epoch != epoch_index or inference is None:
                continue
            requests, tokens = totals.get(details.model, (0, 0))
            totals[details.model] = (requests + 1, tokens + inference.total_tokens)
        return dict(sorted(totals.items()))

    def completed_inferences(self) -> list[CompletedInference]:
        """Every completed inference still in the store: model, the block it completed in, its tokens."""
        out = []
        for (_, inference_id), details in self.validation_details.items():
            inference = self.inferences.get(inference_id)
            if inference is not None:
                out.append(CompletedInference(details.model, details.created_at_block_height, inference.total_tokens))
        return out

    def set_inference(self, inference: Inference) -> None:
        """Store an inference and its developer statistics entry (the chain's SetInference, §2.8)."""
        self.inferences[inference.inference_id] = inference
        self.inference_stats[inference.inference_id] = InferenceStat(
            time_ms=inference.stat_time_ms, model=inference.model, tokens=inference.total_tokens
        )

    # --- PoC data ----------------------------------------------------------------------------------

    def batches_of(self, stage: int | None = None, participant: str | None = None) -> list[PoCBatch]:
        return [
            b for (s, p, _), b in sorted(self.batches.items())
            if (stage is None or s == stage) and (participant is None or p == participant)
        ]

    def validations_of(self, stage: int | None = None, participant: str | None = None) -> list[PoCValidation]:
        return [
            v for (s, p, _), v in sorted(self.validations.items())
            if (stage is None or s == stage) and (participant is None or p == participant)
        ]

    def seeds_of(self, epoch_index: int | None = None) -> list[RandomSeed]:
        return [s for (e, _), s in sorted(self.seeds.items()) if epoch_index is None or e == epoch_index]
