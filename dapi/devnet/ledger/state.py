"""The inference module's store: what the message handlers write and the end-block stages read and write.

One `InferenceState` per ledger. The handlers (`handlers`) and the end-block stages (`endblock`) are
functions over it, and the ledger answers its read queries from it. Accounts, grants, blocks and the
mempool are not here: they belong to the ledger itself (x/auth, x/authz and the node around the app).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from dapi.chain.epochs import Epoch, EpochParams
from dapi.devnet.genesis import DevnetGenesis
from dapi.devnet.ledger.records import ClaimRecord, EpochReport, History, InferenceStat
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

__all__ = ["GENESIS_REPUTATION", "InferenceState"]

GENESIS_REPUTATION = 1

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
    inference_stats: list[InferenceStat] = field(default_factory=list)

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
