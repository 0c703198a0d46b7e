"""Epoch formation at the end of PoC validation (plan 3.x, 4.x, 5.x, 6.x, 11.2; DESIGN.md §6).

From the stage's PoC batches and votes, last epoch's allocations, the hardware declarations and the
governance registry, build the upcoming epoch: its active participants (per-node weights, one model
per node, POC_SLOT timeslots), its parent group and one sub-group per served model with a snapshot of
that model as governance defines it at this moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dapi.devnet.schedule.assignment import PocSlotPolicy, apply_poc_slot_policy, assign_models
from dapi.devnet.schedule.models import ModelRegistry
from dapi.devnet.schedule.preservation import preserved_node_weights
from dapi.devnet.schedule.records import (
    ActiveParticipant,
    EpochGroupData,
    HardwareNodes,
    ParticipantRecord,
    PoCBatch,
    PoCValidation,
    RandomSeed,
    SeedSignature,
    ValidationWeight,
)
from dapi.devnet.schedule.throughput import expected_throughput_vector
from dapi.devnet.schedule.weights import is_poc_validated, nonce_weights_by_node, participant_node_weights

__all__ = [
    "FormationInput",
    "FormedEpoch",
    "build_epoch_groups",
    "compute_active_participants",
    "form_epoch",
    "unit_of_compute_price",
    "weighted_median_price",
]


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class FormationInput:
    """Everything the chain reads when it forms epoch `epoch_index` (the upcoming one).

    - `batches` / `validations`: stored for this epoch's PoC stage (others are ignored), one per
      (participant, batch_id) and per (participant, validator), as the chain's store keys them.
    - `validator_weights`: member weights of the effective epoch (the validators voting on this PoC).
    - `seeds`: the seeds submitted for this epoch; a participant without one is not formed.
    - `previous`: the active participants of the effective epoch (epoch_index - 1); empty after genesis.
    - `default_unit_of_compute_price`: the price of a member without a proposal (the effective epoch's
      price, or the params default for the first epoch).
    """

    epoch_index: int
    poc_start_block_height: int
    registry: ModelRegistry
    participants: Mapping[str, ParticipantRecord]
    hardware: Mapping[str, HardwareNodes] = field(default_factory=_empty)
    batches: Sequence[PoCBatch] = ()
    validations: Sequence[PoCValidation] = ()
    validator_weights: Mapping[str, int] = field(default_factory=_empty)
    seeds: Mapping[str, RandomSeed] = field(default_factory=_empty)
    previous: Sequence[ActiveParticipant] = ()
    price_proposals: Mapping[str, int] = field(default_factory=_empty)
    default_unit_of_compute_price: int = 100
    reputations: Mapping[str, int] = field(default_factory=_empty)
    poc_slot_policy: PocSlotPolicy = PocSlotPolicy.WEIGHT


@dataclass(frozen=True, slots=True, kw_only=True)
class FormedEpoch:
    """A formed epoch: its members, its parent group and one sub-group per model, in the parent's model order."""

    active_participants: tuple[ActiveParticipant, ...]
    parent: EpochGroupData
    sub_groups: tuple[EpochGroupData, ...]  # in parent.sub_group_models order

    def sub_group(self, model_id: str) -> EpochGroupData | None:
        return next((g for g in self.sub_groups if g.model_id == model_id), None)

    def participant(self, address: str) -> ActiveParticipant | None:
        return next((p for p in self.active_participants if p.index == address), None)


def compute_active_participants(inp: FormationInput) -> tuple[ActiveParticipant, ...]:
    """The upcoming epoch's members, sorted by address.

    A participant is formed when it has a participant record and a seed, and either accepted PoC
    weight or preserved weight, for a total of at least 1:
    - its mined weight (batches of nodes that had POC_SLOT=true are ignored) counts only when it has a
      validator key and a strict majority of the current validators' weight voted it valid;
    - preserved nodes keep last epoch's weight without validation (they served, they did not mine);
    - legacy batches are spread over the non-preserved hardware nodes; every hardware node appears;
    - participant weight = the sum of all its node weights, overflow included.
    """
    preserved = preserved_node_weights(inp.previous)
    batches: dict[str, list[PoCBatch]] = {}
    for batch in inp.batches:
        if batch.poc_stage_start_block_height == inp.poc_start_block_height:
            batches.setdefault(batch.participant_address, []).append(batch)
    votes: dict[str, list[PoCValidation]] = {}
    for vote in inp.validations:
        if vote.poc_stage_start_block_height == inp.poc_start_block_height:
            votes.setdefault(vote.participant_address, []).append(vote)

    formed: list[ActiveParticipant] = []
    for address in sorted(set(batches) | set(preserved)):
        record = inp.participants.get(address)
        seed = inp.seeds.get(address)
        if record is None or seed is None:
            continue
        kept = preserved.get(address, {})
        mined = {
            node_id: w for node_id, w in nonce_weights_by_node(batches.get(address, ())).items() if node_id not in kept
        }
        if mined and not (record.validator_key and is_poc_validated(votes.get(address, ()), inp.validator_weights)):
            mined = {}
        hardware = inp.hardware.get(address)
        hardware_nodes = hardware.hardware_nodes if hardware is not None else ()
        weights = participant_node_weights(mined, hardware_nodes, kept)
        total = sum(weights.values())
        if total < 1:
            continue
        assignment = apply_poc_slot_policy(
            assign_models(weights, hardware_nodes, inp.registry),
            epoch_index=inp.epoch_index,
            participant_address=address,
            policy=inp.poc_slot_policy,
        )
        formed.append(
            ActiveParticipant(
                index=address,
                validator_key=record.validator_key,
                weight=total,
                inference_url=record.inference_url,
                models=assignment.models,
                seed=seed,
                ml_nodes=assignment.ml_nodes,
            )
        )
    return tuple(formed)


def weighted_median_price(entries: Iterable[tuple[int, int]]) -> int | None:
    """The price at which the running weight (prices ascending) first reaches half, (total+1) // 2.

    `entries` are (price, weight); None when there is no positive weight.
    """
    priced = sorted((price, weight) for price, weight in entries if weight > 0)
    total = sum(weight for _, weight in priced)
    if total <= 0:
        return None
    half = (total + 1) // 2
    running = 0
    for price, weight in priced:
        running += weight
        if running >= half:
            return price
    raise AssertionError("unreachable: the running weight ends at the total")


def unit_of_compute_price(members: Iterable[ValidationWeight], proposals: Mapping[str, int], default_price: int) -> int:
    """The epoch's unit_of_compute_price: the member-weighted median of the price proposals.

    A member without a proposal counts at `default_price`; with no members at all the price is the
    default too (the reference gives 0 there, which would make compute free).
    """
    median = weighted_median_price((proposals.get(vw.member_address, default_price), vw.weight) for vw in members)
    return default_price if median is None else median


def build_epoch_groups(
    active: Sequence[ActiveParticipant],
    *,
    epoch_index: int,
    poc_start_block_height: int,
    registry: ModelRegistry,
    unit_of_compute_price: int,
    reputations: Mapping[str, int] = MappingProxyType({}),
) -> tuple[EpochGroupData, tuple[EpochGroupData, ...]]:
    """The parent group and one sub-group per model with at least one member, in model id order.

    Parent: every member with its total weight (no node lists, as on the chain). Sub-group of model m:
    `model_snapshot` = the governance model now; one ValidationWeight per member serving m, carrying its
    nodes for m and, as weight, the PoC weight of those nodes (plan 5.5), so that `total_weight` measures
    the model's capacity; `total_throughput` = Σ node throughput. The parent's throughput sums the
    sub-groups', and its `expected_throughput_vector` is SetExpectedThroughput's (plan 6.5): per model, the
    throughput of the nodes that keep serving during the next PoC.
    """
    members = sorted(active, key=lambda p: p.index)
    signatures = {
        p.index: SeedSignature(member_address=p.index, signature=p.seed.signature if p.seed else "") for p in members
    }
    sub_groups: list[EpochGroupData] = []
    for model_id in sorted({m for p in members for m in p.models}):
        weights = []
        for p in members:
            nodes = p.nodes_for_model(model_id)
            if nodes:
                weights.append(
                    ValidationWeight(
                        member_address=p.index,
                        weight=sum(n.poc_weight for n in nodes),
                        reputation=reputations.get(p.index, 0),
                        ml_nodes=nodes,
                    )
                )
        sub_groups.append(
            EpochGroupData(
                poc_start_block_height=poc_start_block_height,
                epoch_index=epoch_index,
                model_id=model_id,
                member_seed_signatures=tuple(signatures[vw.member_address] for vw in weights),
                validation_weights=tuple(weights),
                unit_of_compute_price=unit_of_compute_price,
                total_weight=sum(vw.weight for vw in weights),
                model_snapshot=registry.get_governance_model(model_id),
                total_throughput=sum(n.throughput for vw in weights for n in vw.ml_nodes),
            )
        )
    parent = EpochGroupData(
        poc_start_block_height=poc_start_block_height,
        epoch_index=epoch_index,
        member_seed_signatures=tuple(signatures[p.index] for p in members),
        validation_weights=tuple(
            ValidationWeight(member_address=p.index, weight=p.weight, reputation=reputations.get(p.index, 0))
            for p in members
        ),
        unit_of_compute_price=unit_of_compute_price,
        total_weight=sum(p.weight for p in members),
        sub_group_models=tuple(g.model_id for g in sub_groups),
        total_throughput=sum(g.total_throughput for g in sub_groups),
        expected_throughput_vector=expected_throughput_vector(tuple(g.model_id for g in sub_groups), members),
    )
    return parent, tuple(sub_groups)


def form_epoch(inp: FormationInput) -> FormedEpoch:
    active = compute_active_participants(inp)
    price = unit_of_compute_price(
        (ValidationWeight(member_address=p.index, weight=p.weight) for p in active),
        inp.price_proposals,
        inp.default_unit_of_compute_price,
    )
    parent, sub_groups = build_epoch_groups(
        active,
        epoch_index=inp.epoch_index,
        poc_start_block_height=inp.poc_start_block_height,
        registry=inp.registry,
        unit_of_compute_price=price,
        reputations=inp.reputations,
    )
    return FormedEpoch(active_participants=active, parent=parent, sub_groups=sub_groups)
