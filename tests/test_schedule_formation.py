"""Epoch formation: active participants, parent group, model sub-groups, snapshots and price
(plan 3.x, 4.x, 5.x, 6.3, 11.2; DESIGN.md §6)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from dapi.devnet.schedule.assignment import PocSlotPolicy
from dapi.devnet.schedule.formation import (
    FormationInput,
    FormedEpoch,
    form_epoch,
    unit_of_compute_price,
    weighted_median_price,
)
from dapi.devnet.schedule.models import GENESIS_MODELS, ModelRegistry
from dapi.devnet.schedule.records import (
    ActiveParticipant,
    HardwareNode,
    HardwareNodes,
    MLNodeInfo,
    ModelMLNodes,
    ParticipantRecord,
    PoCBatch,
    PoCValidation,
    RandomSeed,
    SeedSignature,
    ValidationWeight,
)

QWQ_MODEL, Q7_MODEL = GENESIS_MODELS
QWQ, Q7 = QWQ_MODEL.id, Q7_MODEL.id
REGISTRY = ModelRegistry.of(GENESIS_MODELS)
# Seeded visit orders (sha256("<epoch>:<address>")): epoch 1: alice Q7→QwQ, bob QwQ→Q7; epoch 2: alice QwQ→Q7.
ALICE, BOB, CAROL, DAVE = "gonka1alice", "gonka1bob", "gonka1carol", "gonka1dave"
STAGE_1, STAGE_2 = 40, 80  # PoC starts of epochs 1 and 2 with default params


def batch(participant: str, node_id: str, nonces: int, batch_id: str, stage: int = STAGE_1) -> PoCBatch:
    return PoCBatch(
        participant_address=participant,
        poc_stage_start_block_height=stage,
        batch_id=batch_id,
        nonces=tuple(range(nonces)),
        dist=(0.1,) * nonces,
        node_id=node_id,
    )


def votes(participant: str, *validators: str, fraud: bool = False, stage: int = STAGE_1) -> list[PoCValidation]:
    return [
        PoCValidation(
            participant_address=participant,
            validator_participant_address=v,
            poc_stage_start_block_height=stage,
            fraud_detected=fraud,
        )
        for v in validators
    ]


def record(address: str, validator_key: str | None = None) -> ParticipantRecord:
    return ParticipantRecord(
        address=address,
        validator_key=f"vk-{address}" if validator_key is None else validator_key,
        inference_url=f"http://{address}:8080",
    )


def hardware(participant: str, **nodes: tuple[str, ...]) -> HardwareNodes:
    return HardwareNodes(
        participant=participant,
        hardware_nodes=tuple(HardwareNode(local_id=lid, models=models) for lid, models in sorted(nodes.items())),
    )


def seeds(epoch: int, *addresses: str) -> dict[str, RandomSeed]:
    return {a: RandomSeed(participant=a, epoch_index=epoch, signature=f"sig-{a}-{epoch}") for a in addresses}


def form(
    *,
    epoch: int = 1,
    stage: int = STAGE_1,
    records: Sequence[ParticipantRecord],
    hw: Sequence[HardwareNodes] = (),
    batches: Sequence[PoCBatch] = (),
    validations: Sequence[PoCValidation] = (),
    validators: Mapping[str, int],
    seeded: Sequence[str] | None = None,
    previous: Sequence[ActiveParticipant] = (),
    registry: ModelRegistry = REGISTRY,
    **kw: object,
) -> FormedEpoch:
    return form_epoch(
        FormationInput(
            epoch_index=epoch,
            poc_start_block_height=stage,
            registry=registry,
            participants={r.address: r for r in records},
            hardware={h.participant: h for h in hw},
            batches=batches,
            validations=validations,
            validator_weights=validators,
            seeds=seeds(epoch, *(seeded if seeded is not None else [r.address for r in records])),
            previous=previous,
            **kw,  # type: ignore[arg-type]
        )
    )


def weights_of(p: ActiveParticipant | None) -> dict[str, int]:
    assert p is not None
    return {n.node_id: n.poc_weight for n in p.all_nodes}


def serving_ids(p: ActiveParticipant | None) -> list[str]:
    assert p is not None
    return [n.node_id for n in p.all_nodes if n.is_active_during_poc]


GENESIS_VALIDATORS = {ALICE: 10, BOB: 10, CAROL: 10}  # DESIGN.md §6: epoch 0 = every participant, equal weight


def first_epoch() -> FormedEpoch:
    return form(
        records=[record(ALICE), record(BOB), record(CAROL)],
        hw=[hardware(ALICE, a1=(QWQ,), a2=(Q7,)), hardware(BOB, b1=(Q7,), b2=(Q7,)), hardware(CAROL, c1=(QWQ,))],
        batches=[
            batch(ALICE, "a1", 60, "1"),
            batch(ALICE, "a2", 40, "2"),
            batch(BOB, "b1", 10, "3"),
            batch(BOB, "b1", 20, "4"),
            batch(BOB, "b2", 20, "5"),
            batch(CAROL, "c1", 10, "6"),
        ],
        validations=[*votes(ALICE, BOB, CAROL), *votes(BOB, ALICE, CAROL), *votes(CAROL, ALICE)],
        validators=GENESIS_VALIDATORS,
        price_proposals={ALICE: 120},
        default_unit_of_compute_price=100,
    )


def test_first_epoch_forms_parent_and_one_sub_group_per_served_model() -> None:
    epoch = first_epoch()
    # Carol's single valid vote (10 of 30) is no majority: she is not in the epoch.
    assert [p.index for p in epoch.active_participants] == [ALICE, BOB]
    alice, bob = epoch.active_participants
    assert (alice.weight, bob.weight) == (100, 50)  # Σ node weights; bob's b1 = 10 + 20 from two batches
    assert (alice.models, bob.models) == ((QWQ, Q7), (Q7,))
    assert alice.seed == RandomSeed(participant=ALICE, epoch_index=1, signature=f"sig-{ALICE}-1")
    assert (alice.validator_key, alice.inference_url) == (f"vk-{ALICE}", f"http://{ALICE}:8080")

    parent = epoch.parent
    assert (parent.model_id, parent.epoch_index, parent.poc_start_block_height) == ("", 1, STAGE_1)
    assert parent.sub_group_models == (QWQ, Q7)
    assert parent.validation_weights == (
        ValidationWeight(member_address=ALICE, weight=100),
        ValidationWeight(member_address=BOB, weight=50),
    )
    assert parent.total_weight == 150
    assert parent.member_seed_signatures == (
        SeedSignature(member_address=ALICE, signature=f"sig-{ALICE}-1"),
        SeedSignature(member_address=BOB, signature=f"sig-{BOB}-1"),
    )

    qwq = epoch.sub_group(QWQ)
    assert qwq is not None and qwq.model_snapshot == QWQ_MODEL
    assert (qwq.model_id, qwq.epoch_index, qwq.poc_start_block_height) == (QWQ, 1, STAGE_1)
    # Alice visits Q7 first in epoch 1: a2 (40) mines, carry 20 is not > 60/2, so a1 mines too.
    assert qwq.validation_weights == (
        ValidationWeight(
            member_address=ALICE,
            weight=60,
            ml_nodes=(
                MLNodeInfo(node_id="a1", poc_weight=60, throughput=60 * 1000, timeslot_allocation=(True, False)),
            ),
        ),
    )
    assert (qwq.total_weight, qwq.total_throughput) == (60, 60_000)
    assert qwq.member_seed_signatures == (SeedSignature(member_address=ALICE, signature=f"sig-{ALICE}-1"),)

    q7 = epoch.sub_group(Q7)
    assert q7 is not None and q7.model_snapshot == Q7_MODEL
    assert [vw.member_address for vw in q7.validation_weights] == [ALICE, BOB]
    assert [vw.weight for vw in q7.validation_weights] == [40, 50]  # per-model weight (plan 5.5)
    # Bob: b1 30 > 50/2, so b2 (20) keeps serving during the next PoC.
    assert q7.validation_weights[1].ml_nodes == (
        MLNodeInfo(node_id="b1", poc_weight=30, throughput=300_000, timeslot_allocation=(True, False)),
        MLNodeInfo(node_id="b2", poc_weight=20, throughput=200_000, timeslot_allocation=(True, True)),
    )
    assert (q7.total_weight, q7.total_throughput) == (90, 400_000 + 300_000 + 200_000)
    assert parent.total_throughput == 60_000 + 900_000

    # Weighted median of the proposals: bob (50) at the default 100, alice (100) at 120 → half 75 → 120.
    assert parent.unit_of_compute_price == q7.unit_of_compute_price == 120


def test_preserved_node_keeps_its_weight_and_its_batches_are_ignored() -> None:
    epoch1 = first_epoch()
    assert serving_ids(epoch1.participant(BOB)) == ["b2"]
    # PoC of epoch 2: bob's b2 was POC_SLOT, yet it mined 500 nonces anyway; b1 mined 35.
    epoch2 = form(
        epoch=2,
        stage=STAGE_2,
        records=[record(ALICE), record(BOB)],
        hw=[hardware(ALICE, a1=(QWQ,), a2=(Q7,)), hardware(BOB, b1=(Q7,), b2=(Q7,))],
        batches=[batch(BOB, "b1", 35, "1", STAGE_2), batch(BOB, "b2", 500, "2", STAGE_2)],
        validations=votes(BOB, ALICE, stage=STAGE_2),
        validators={ALICE: 100, BOB: 50},  # epoch 1's members vote on epoch 2's PoC
        previous=epoch1.active_participants,
    )
    bob = epoch2.participant(BOB)
    assert weights_of(bob) == {"b1": 35, "b2": 20}
    assert bob is not None and bob.weight == 55
    # Alice mined nothing and had no serving node: she drops out.
    assert epoch2.participant(ALICE) is None


def test_preserved_only_participant_needs_no_validation_and_its_idle_nodes_mine() -> None:
    epoch1 = first_epoch()
    epoch2 = form(
        epoch=2,
        stage=STAGE_2,
        records=[record(BOB)],
        hw=[hardware(BOB, b1=(Q7,), b2=(Q7,))],
        validators={ALICE: 100, BOB: 50},
        previous=epoch1.active_participants,
    )
    bob = epoch2.participant(BOB)
    assert weights_of(bob) == {"b1": 0, "b2": 20}
    assert bob is not None and bob.weight == 20
    # b2 is the only weight: it must mine now (serving must stay below half); b1 has none and mines too.
    assert serving_ids(bob) == []


def test_failed_validation_drops_the_mined_weight_but_not_the_preserved_one() -> None:
    epoch1 = first_epoch()
    epoch2 = form(
        epoch=2,
        stage=STAGE_2,
        records=[record(BOB)],
        hw=[hardware(BOB, b1=(Q7,), b2=(Q7,))],
        batches=[batch(BOB, "b1", 35, "1", STAGE_2)],
        validations=votes(BOB, ALICE, fraud=True, stage=STAGE_2),
        validators={ALICE: 100, BOB: 50},
        previous=epoch1.active_participants,
    )
    assert weights_of(epoch2.participant(BOB)) == {"b1": 0, "b2": 20}


def test_legacy_batches_with_a_remainder_are_spread_over_hardware_nodes() -> None:
    epoch = form(
        records=[record(DAVE)],
        hw=[hardware(DAVE, d3=(Q7,), d1=(Q7,), d2=(Q7,))],
        batches=[batch(DAVE, "", 7, "1"), batch(DAVE, "", 3, "2")],
        validations=votes(DAVE, DAVE),
        validators={DAVE: 1},
    )
    dave = epoch.participant(DAVE)
    assert weights_of(dave) == {"d1": 4, "d2": 3, "d3": 3}  # 10 = 3·3 + 1: d1 (first by local_id) gets +1
    assert dave is not None and dave.weight == 10


def test_worked_example_of_the_reference_with_the_seed_plan_rules() -> None:
    # chain-logic.md §4.6: effective members A=100, B=50, C=30; upcoming U=2.
    # P1: legacy batches 40 + 60, votes A valid, B invalid → 100 > 90 accepted. P2: 10 nonces, B and C valid →
    # 80 ≤ 90 rejected. Epoch 1: P1 node n2 (40) and P3 node x (25) had POC_SLOT; P3 has no batches but a seed.
    # Reference result: P1 weight 140, P3 weight 25. With hw n1, n2 (QwQ) for P1: legacy 100 goes to n1 only.
    p1, p2, p3 = "gonka1p1", "gonka1p2", "gonka1p3"
    previous = (
        ActiveParticipant(
            index=p1,
            weight=40,
            models=(QWQ,),
            ml_nodes=(
                ModelMLNodes(ml_nodes=(MLNodeInfo(node_id="n2", poc_weight=40, timeslot_allocation=(True, True)),)),
            ),
        ),
        ActiveParticipant(
            index=p3,
            weight=25,
            models=(QWQ,),
            ml_nodes=(
                ModelMLNodes(ml_nodes=(MLNodeInfo(node_id="x", poc_weight=25, timeslot_allocation=(True, True)),)),
            ),
        ),
    )
    epoch = form(
        epoch=2,
        stage=STAGE_2,
        records=[record(p1), record(p2), record(p3)],
        hw=[hardware(p1, n1=(QWQ,), n2=(QWQ,)), hardware(p3, x=(QWQ,))],
        batches=[batch(p1, "", 40, "1", STAGE_2), batch(p1, "", 60, "2", STAGE_2), batch(p2, "", 10, "3", STAGE_2)],
        validations=[
            *votes(p1, "A", stage=STAGE_2),
            *votes(p1, "B", fraud=True, stage=STAGE_2),
            *votes(p2, "B", "C", stage=STAGE_2),
        ],
        validators={"A": 100, "B": 50, "C": 30},
        previous=previous,
    )
    assert [(p.index, p.weight) for p in epoch.active_participants] == [(p1, 140), (p3, 25)]
    assert weights_of(epoch.participant(p1)) == {"n1": 100, "n2": 40}
    # Weight rule: n1 100 > 140/2 mines, n2 keeps serving (40 < 70); P3's single node must mine.
    assert serving_ids(epoch.participant(p1)) == ["n2"]
    assert serving_ids(epoch.participant(p3)) == []


def test_governance_change_between_formations() -> None:
    # Epoch 1 under the genesis registry: a1 lists [Q7, QwQ] → Q7; a2 → QwQ.
    epoch1 = form(
        records=[record(ALICE)],
        hw=[hardware(ALICE, a1=(Q7, QWQ), a2=(QWQ,))],
        batches=[batch(ALICE, "a1", 30, "1"), batch(ALICE, "a2", 20, "2")],
        validations=votes(ALICE, ALICE),
        validators={ALICE: 1},
    )
    snapshot_before = epoch1.sub_group(Q7)
    assert snapshot_before is not None and snapshot_before.model_snapshot == Q7_MODEL
    # Alice visits Q7 first: a1 (30) mines, carry 15 > 20/2 → a2 keeps serving.
    assert serving_ids(epoch1.participant(ALICE)) == ["a2"]

    # Governance: Q7 is removed, QwQ gets new parameters.
    bigger_qwq = dataclasses.replace(QWQ_MODEL, v_ram=96, model_args=("--tensor-parallel-size", "2"))
    registry2 = REGISTRY.delete_governance_model(Q7).register_model(bigger_qwq)

    # The formed epoch keeps its snapshots.
    assert epoch1.sub_group(Q7) == snapshot_before
    qwq1 = epoch1.sub_group(QWQ)
    assert qwq1 is not None and qwq1.model_snapshot == QWQ_MODEL and qwq1.model_snapshot.v_ram == 80

    # Epoch 2 is formed under the new registry: a1 falls through to QwQ, the next model in its own list.
    epoch2 = form(
        epoch=2,
        stage=STAGE_2,
        records=[record(ALICE)],
        hw=[hardware(ALICE, a1=(Q7, QWQ), a2=(QWQ,))],
        batches=[batch(ALICE, "a1", 40, "1", STAGE_2)],
        validations=votes(ALICE, ALICE, stage=STAGE_2),
        validators={ALICE: 50},
        previous=epoch1.active_participants,
        registry=registry2,
    )
    assert epoch2.parent.sub_group_models == (QWQ,)
    qwq2 = epoch2.sub_group(QWQ)
    assert qwq2 is not None and qwq2.model_snapshot == bigger_qwq
    assert [(n.node_id, n.poc_weight) for n in qwq2.validation_weights[0].ml_nodes] == [("a1", 40), ("a2", 20)]


def test_a_participant_whose_nodes_serve_no_governance_model_is_only_in_the_parent() -> None:
    epoch = form(
        records=[record(ALICE), record(BOB)],
        hw=[hardware(ALICE, a1=("unregistered/model",)), hardware(BOB, b1=(QWQ,))],
        batches=[batch(ALICE, "a1", 5, "1"), batch(BOB, "b1", 7, "2")],
        validations=[*votes(ALICE, ALICE, BOB), *votes(BOB, ALICE, BOB)],
        validators={ALICE: 1, BOB: 1},
    )
    alice = epoch.participant(ALICE)
    assert alice is not None and alice.models == () and alice.weight == 5  # overflow weight still counts
    assert [n.node_id for n in alice.overflow_nodes] == ["a1"]
    assert [vw.member_address for vw in epoch.parent.validation_weights] == [ALICE, BOB]
    assert epoch.parent.sub_group_models == (QWQ,)  # Q7 has no member: no sub-group
    qwq = epoch.sub_group(QWQ)
    assert qwq is not None and [vw.member_address for vw in qwq.validation_weights] == [BOB]


def test_a_participant_without_hardware_keeps_its_weight_in_overflow() -> None:
    # The reference drops the node list but keeps the weight (chain-logic.md §15.4); here the weight stays
    # with the nodes, so participant weight = Σ node weights holds.
    epoch = form(
        records=[record(ALICE)],
        batches=[batch(ALICE, "n1", 5, "1"), batch(ALICE, "", 3, "2")],
        validations=votes(ALICE, ALICE),
        validators={ALICE: 1},
    )
    alice = epoch.participant(ALICE)
    assert alice is not None and alice.weight == 8
    assert [(n.node_id, n.poc_weight) for n in alice.overflow_nodes] == [("", 3), ("n1", 5)]


def test_who_is_left_out() -> None:
    everyone = [record(ALICE), record(BOB, validator_key=""), record(CAROL)]
    epoch = form(
        records=everyone,
        seeded=[ALICE, BOB],  # carol submitted no seed for the epoch
        hw=[hardware(a, n=(QWQ,)) for a in (ALICE, BOB, CAROL, DAVE)],
        batches=[batch(a, "n", 5, a) for a in (ALICE, BOB, CAROL, DAVE)]  # dave has no participant record
        + [batch(ALICE, "n", 100, "old", stage=STAGE_1 - 40)],  # another stage's batch does not count
        validations=[v for a in (ALICE, BOB, CAROL, DAVE) for v in votes(a, ALICE)],
        validators={ALICE: 1},
    )
    # Bob has no validator key, carol no seed, dave no record.
    assert [(p.index, p.weight) for p in epoch.active_participants] == [(ALICE, 5)]


def test_half_nodes_policy_can_be_chosen_for_formation() -> None:
    # One node per model: the reference's node-count rule never lets it serve (chain-logic.md §15.9).
    common = dict(
        records=[record(BOB)],
        hw=[hardware(BOB, q=(QWQ,), s=(Q7,))],
        batches=[batch(BOB, "q", 100, "1"), batch(BOB, "s", 60, "2")],
        validations=votes(BOB, BOB),
        validators={BOB: 1},
    )
    assert serving_ids(form(**common).participant(BOB)) == ["s"]  # type: ignore[arg-type]
    half = form(**common, poc_slot_policy=PocSlotPolicy.HALF_NODES)  # type: ignore[arg-type]
    assert serving_ids(half.participant(BOB)) == []


def test_empty_epoch_forms_an_empty_parent_at_the_default_price() -> None:
    epoch = form(records=[record(ALICE)], validators={ALICE: 1}, default_unit_of_compute_price=77)
    assert epoch.active_participants == () and epoch.sub_groups == ()
    assert (epoch.parent.total_weight, epoch.parent.sub_group_models, epoch.parent.unit_of_compute_price) == (0, (), 77)


# --- unit_of_compute_price ------------------------------------------------------------------------------


def test_weighted_median_price() -> None:
    # chain-logic.md §9.1: sort by price; half = (total + 1) div 2; first price where the running weight ≥ half.
    assert weighted_median_price([(200, 20), (100, 10), (150, 30)]) == 150  # running 10, 40 ≥ 30
    assert weighted_median_price([(100, 1), (200, 1)]) == 100  # half = 1: the lower median
    assert weighted_median_price([(100, 1), (200, 2)]) == 200  # half = 2
    assert weighted_median_price([(300, 0)]) is None
    assert weighted_median_price([]) is None


def test_members_without_a_proposal_count_at_the_default_price() -> None:
    members = [ValidationWeight(member_address=a, weight=w) for a, w in ((ALICE, 10), (BOB, 20), (CAROL, 30))]
    assert unit_of_compute_price(members, {ALICE: 100, BOB: 200}, default_price=150) == 150
    assert unit_of_compute_price(members, {}, default_price=90) == 90
    assert unit_of_compute_price(members, {CAROL: 10, BOB: 10}, default_price=90) == 10
    assert unit_of_compute_price([], {ALICE: 5}, default_price=90) == 90
