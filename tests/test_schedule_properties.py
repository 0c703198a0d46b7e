"""Property tests of the schedule rules (DESIGN.md §6): layout, the 50% bounds, determinism."""

from __future__ import annotations

import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dapi.devnet.schedule.assignment import ModelAssignment, PocSlotPolicy, apply_poc_slot_policy, assign_models
from dapi.devnet.schedule.formation import FormationInput, form_epoch
from dapi.devnet.schedule.models import ModelRegistry
from dapi.devnet.schedule.records import (
    HardwareNode,
    HardwareNodes,
    Model,
    ParticipantRecord,
    PoCBatch,
    PoCValidation,
    RandomSeed,
)

GOVERNANCE = ("m/alpha", "m/beta", "m/gamma")
REGISTRY = ModelRegistry.of(Model(id=m, throughput_per_nonce=i + 1) for i, m in enumerate(GOVERNANCE))
MODEL_CHOICES = (*GOVERNANCE, "x/unknown", "y/unknown")
NODE_IDS = tuple(f"n{i}" for i in range(10))

hardware_nodes = st.dictionaries(
    st.sampled_from(NODE_IDS),
    st.lists(st.sampled_from(MODEL_CHOICES), unique=True, max_size=4),
    max_size=8,
).map(lambda d: tuple(HardwareNode(local_id=k, models=tuple(v)) for k, v in sorted(d.items())))
# Weights: many zeros and small values to hit ties, plus a few nodes that are not declared as hardware.
weight_values = st.one_of(st.just(0), st.integers(1, 5), st.sampled_from([2, 4, 6, 8]), st.integers(1, 10_000))
node_weights = st.dictionaries(st.sampled_from((*NODE_IDS, "ghost", "")), weight_values, max_size=10)
addresses = st.sampled_from(["gonka1alice", "gonka1bob", "gonka1carol", "gonka1dave"])
epochs = st.integers(1, 10_000)


def _declared_first_model(node: HardwareNode) -> str | None:
    return next((m for m in node.models if REGISTRY.is_valid_governance_model(m)), None)


@settings(max_examples=200, deadline=None)
@given(hw=hardware_nodes, weights=node_weights)
def test_property_every_node_is_in_exactly_one_list(hw: tuple[HardwareNode, ...], weights: dict[str, int]) -> None:
    result = assign_models(weights, hw, REGISTRY)
    listed = [n.node_id for g in result.ml_nodes for n in g.ml_nodes]
    assert sorted(listed) == sorted(weights)  # every node exactly once, nothing invented
    assert len(result.ml_nodes) in (len(result.models), len(result.models) + 1)
    assert list(result.models) == sorted(result.models)
    assert all(result.ml_nodes[i].ml_nodes for i in range(len(result.models)))  # no empty model list
    declared = {n.local_id: n for n in hw}
    for model_id in result.models:
        for node in result.nodes_of(model_id):
            assert _declared_first_model(declared[node.node_id]) == model_id
            model = REGISTRY.get_governance_model(model_id)
            assert model is not None and node.throughput == node.poc_weight * model.throughput_per_nonce
    for node in result.overflow:
        assert node.node_id not in declared or _declared_first_model(declared[node.node_id]) is None
        assert node.timeslot_allocation == (True, False)


def _serving_and_total(result: ModelAssignment) -> tuple[int, int, int]:
    nodes = [n for i in range(len(result.models)) for n in result.ml_nodes[i].ml_nodes]
    serving = sum(n.poc_weight for n in nodes if n.is_active_during_poc)
    total = sum(n.poc_weight for n in nodes)
    largest = max((n.poc_weight for n in nodes), default=0)
    return serving, total, largest


def _hw(**models: tuple[str, ...]) -> tuple[HardwareNode, ...]:
    return tuple(HardwareNode(local_id=k, models=v) for k, v in sorted(models.items()))


@settings(max_examples=300, deadline=None)
@given(hw=hardware_nodes, weights=node_weights, epoch=epochs, address=addresses)
# Ties at exactly half, inside one model and across two, always in the run (random draws hit them only often).
@example(hw=_hw(n0=("m/alpha",), n1=("m/alpha",)), weights={"n0": 3, "n1": 3}, epoch=1, address="gonka1alice")
@example(hw=_hw(n0=("m/alpha",), n1=("m/beta",)), weights={"n0": 4, "n1": 4}, epoch=1, address="gonka1alice")
@example(hw=_hw(n0=("m/alpha",), n1=("m/beta",)), weights={"n0": 4, "n1": 4}, epoch=1, address="gonka1bob")
def test_property_serving_weight_is_just_below_half(
    hw: tuple[HardwareNode, ...], weights: dict[str, int], epoch: int, address: str
) -> None:
    result = apply_poc_slot_policy(
        assign_models(weights, hw, REGISTRY),
        epoch_index=epoch,
        participant_address=address,
        policy=PocSlotPolicy.WEIGHT,
    )
    serving, total, largest = _serving_and_total(result)
    # Over the weight the participant can serve with (nodes in model lists; overflow nodes serve nothing):
    if total > 0:
        assert 2 * serving < total  # strictly below half
        assert 2 * serving >= total - 2 * largest  # at least half minus the largest node
    for group in result.ml_nodes:
        for node in group.ml_nodes:
            assert node.timeslot_allocation[0] is True
            if node.poc_weight == 0:
                assert not node.is_active_during_poc  # zero-weight nodes always mine
    assert not any(n.is_active_during_poc for n in result.overflow)


@settings(max_examples=150, deadline=None)
@given(hw=hardware_nodes, weights=node_weights, epoch=epochs, address=addresses)
def test_property_half_nodes_policy_serves_floor_half_of_each_models_nodes(
    hw: tuple[HardwareNode, ...], weights: dict[str, int], epoch: int, address: str
) -> None:
    result = apply_poc_slot_policy(
        assign_models(weights, hw, REGISTRY),
        epoch_index=epoch,
        participant_address=address,
        policy=PocSlotPolicy.HALF_NODES,
    )
    for model_id in result.models:
        nodes = result.nodes_of(model_id)
        assert sum(n.is_active_during_poc for n in nodes) == len(nodes) // 2
    assert not any(n.is_active_during_poc for n in result.overflow)


participants = ["gonka1alice", "gonka1bob", "gonka1carol"]


@st.composite
def formation_inputs(draw: st.DrawFn) -> FormationInput:
    stage = 80
    hw = {p: HardwareNodes(participant=p, hardware_nodes=draw(hardware_nodes)) for p in participants}
    batches = []
    for p in participants:
        for k in range(draw(st.integers(0, 4))):
            node_id = draw(st.sampled_from((*NODE_IDS[:5], "")))
            batches.append(
                PoCBatch(
                    participant_address=p,
                    poc_stage_start_block_height=stage,
                    batch_id=f"{p}-{k}",
                    nonces=tuple(range(draw(st.integers(1, 50)))),
                    node_id=node_id,
                )
            )
    validations = [
        PoCValidation(
            participant_address=p,
            validator_participant_address=v,
            poc_stage_start_block_height=stage,
            fraud_detected=draw(st.booleans()),
        )
        for p in participants
        for v in participants
        if draw(st.booleans())
    ]
    previous = form_epoch(
        FormationInput(
            epoch_index=1,
            poc_start_block_height=40,
            registry=REGISTRY,
            participants={p: ParticipantRecord(address=p, validator_key="vk") for p in participants},
            hardware=hw,
            batches=[
                PoCBatch(
                    participant_address=p,
                    poc_stage_start_block_height=40,
                    batch_id="prev",
                    nonces=tuple(range(draw(st.integers(1, 30)))),
                    node_id=draw(st.sampled_from(NODE_IDS[:5])),
                )
                for p in participants
            ],
            validations=[
                PoCValidation(participant_address=p, validator_participant_address=p, poc_stage_start_block_height=40)
                for p in participants
            ],
            validator_weights=dict.fromkeys(participants, 1),
            seeds={p: RandomSeed(participant=p, epoch_index=1, signature="s") for p in participants},
        )
    ).active_participants
    return FormationInput(
        epoch_index=2,
        poc_start_block_height=stage,
        registry=REGISTRY,
        participants={p: ParticipantRecord(address=p, validator_key="vk") for p in participants},
        hardware=hw,
        batches=batches,
        validations=validations,
        validator_weights={p: draw(st.integers(0, 100)) for p in participants},
        seeds={p: RandomSeed(participant=p, epoch_index=2, signature="s") for p in participants},
        previous=previous,
        price_proposals={p: draw(st.integers(1, 500)) for p in participants if draw(st.booleans())},
        poc_slot_policy=draw(st.sampled_from(PocSlotPolicy)),
    )


@settings(max_examples=60, deadline=None)
@given(inp=formation_inputs(), shuffle_seed=st.integers(0, 2**32))
def test_property_same_inputs_same_outputs(inp: FormationInput, shuffle_seed: int) -> None:
    first = form_epoch(inp)
    assert form_epoch(inp) == first
    # The order in which batches, votes and hardware records arrive does not matter either.
    rng = random.Random(shuffle_seed)
    batches, votes = list(inp.batches), list(inp.validations)
    rng.shuffle(batches)
    rng.shuffle(votes)
    reordered = FormationInput(
        epoch_index=inp.epoch_index,
        poc_start_block_height=inp.poc_start_block_height,
        registry=inp.registry,
        participants=dict(list(inp.participants.items())[::-1]),
        hardware=dict(list(inp.hardware.items())[::-1]),
        batches=batches,
        validations=votes,
        validator_weights=inp.validator_weights,
        seeds=inp.seeds,
        previous=tuple(reversed(inp.previous)),
        price_proposals=inp.price_proposals,
        poc_slot_policy=inp.poc_slot_policy,
    )
    # (The generator gives at most one vote per participant and validator, so the vote order cannot matter.)
    assert form_epoch(reordered) == first


@settings(max_examples=60, deadline=None)
@given(inp=formation_inputs())
def test_property_formed_weights_add_up(inp: FormationInput) -> None:
    epoch = form_epoch(inp)
    for p in epoch.active_participants:
        assert p.weight == sum(n.poc_weight for n in p.all_nodes) >= 1
        listed = [n.node_id for n in p.all_nodes]
        assert len(listed) == len(set(listed))
    assert epoch.parent.total_weight == sum(p.weight for p in epoch.active_participants)
    for group in epoch.sub_groups:
        assert group.total_weight == sum(vw.weight for vw in group.validation_weights)
        assert group.total_throughput == sum(n.throughput for vw in group.validation_weights for n in vw.ml_nodes)
        assert group.model_snapshot == REGISTRY.get_governance_model(group.model_id)
    assert epoch.parent.sub_group_models == tuple(g.model_id for g in epoch.sub_groups)
