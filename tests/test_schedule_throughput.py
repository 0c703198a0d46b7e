"""Throughput vectors, their measurement and the demand-aware pre-PoC selection (plan 6.4-6.6; DESIGN.md §6.1).

Every expected value below is computed by hand from the rules in DESIGN.md §6.1.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dapi.devnet.schedule.records import ActiveParticipant, EpochGroupData, MLNodeInfo, ModelMLNodes
from dapi.devnet.schedule.selection import PrePocSelectionParams, select_poc_slots
from dapi.devnet.schedule.throughput import (
    CompletedInference,
    ThroughputShortfall,
    expected_throughput_vector,
    measure_model_throughput_for_blocks,
    real_throughput_vector,
    set_expected_throughput,
    set_real_throughput,
    validate_throughput_performance,
)

A, B, C = "m/a", "m/b", "m/c"
TPN = {A: 10, B: 5, C: 1}  # throughput per nonce


def member(address: str, nodes: dict[str, list[tuple[str, int]]], *, serving: tuple[str, ...] = (),
           overflow: tuple[tuple[str, int], ...] = ()) -> ActiveParticipant:
    """A member with node lists per model (id order), throughput = weight x TPN, weight = Σ node weights."""
    models = tuple(sorted(nodes))
    groups = [
        ModelMLNodes(ml_nodes=tuple(
            MLNodeInfo(node_id=n, poc_weight=w, throughput=w * TPN[m], timeslot_allocation=(True, n in serving))
            for n, w in nodes[m]
        ))
        for m in models
    ]
    if overflow:
        groups.append(ModelMLNodes(ml_nodes=tuple(
            MLNodeInfo(node_id=n, poc_weight=w, timeslot_allocation=(True, False)) for n, w in overflow
        )))
    weight = sum(w for ns in nodes.values() for _, w in ns) + sum(w for _, w in overflow)
    return ActiveParticipant(index=address, weight=weight, models=models, ml_nodes=tuple(groups))


def serving_ids(members: tuple[ActiveParticipant, ...]) -> dict[str, list[str]]:
    return {p.index: [n.node_id for n in p.all_nodes if n.is_active_during_poc] for p in members}


# --- measurement ----------------------------------------------------------------------------------

DONE = (
    CompletedInference(A, 10, 100),  # at `from`: outside (from, to]
    CompletedInference(A, 11, 30),
    CompletedInference(A, 12, 25),
    CompletedInference(B, 12, 7),
    CompletedInference(A, 15, 10),  # at `to`: inside
    CompletedInference(A, 16, 50),  # after `to`
)


def test_measured_throughput_is_tokens_completed_in_the_window_per_block() -> None:
    # (30 + 25 + 10) tokens over the 5 blocks 11..15.
    assert measure_model_throughput_for_blocks(DONE, A, 10, 15) == 13


def test_measured_throughput_rounds_a_trickle_of_demand_up() -> None:
    assert measure_model_throughput_for_blocks(DONE, B, 10, 15) == 2  # 7 / 5 = 1.4
    assert measure_model_throughput_for_blocks(DONE, C, 10, 15) == 0  # no inference: no demand


def test_an_empty_measurement_window_is_refused() -> None:
    with pytest.raises(ValueError, match="empty window"):
        measure_model_throughput_for_blocks(DONE, A, 15, 15)


def test_vectors_follow_the_parent_groups_model_order() -> None:
    alice = member("gonka1alice", {A: [("a1", 4), ("a2", 6)], B: [("b1", 8)]}, serving=("a2", "b1"))
    bob = member("gonka1bob", {A: [("a3", 3)], C: [("c1", 9)]}, serving=("a3",))
    parent = EpochGroupData(poc_start_block_height=40, epoch_index=1, sub_group_models=(A, B, C))
    # A: a2 60 + a3 30; B: b1 40; C: c1 does not serve.
    assert expected_throughput_vector((A, B, C), (alice, bob)) == (90, 40, 0)
    assert set_expected_throughput(parent, (alice, bob)).expected_throughput_vector == (90, 40, 0)
    assert real_throughput_vector((A, B, C), DONE, 10, 15) == (13, 2, 0)
    assert set_real_throughput(parent, DONE, 10, 15).real_throughput_vector == (13, 2, 0)


def test_every_model_whose_demand_exceeds_its_poc_time_capacity_is_a_shortfall() -> None:
    parent = EpochGroupData(poc_start_block_height=40, epoch_index=1, sub_group_models=(A, B, C),
                            expected_throughput_vector=(100, 50, 0), real_throughput_vector=(120, 50, 1))
    assert validate_throughput_performance(parent) == (ThroughputShortfall(A, 120, 100), ThroughputShortfall(C, 1, 0))


def test_an_unmeasured_epoch_has_no_shortfall() -> None:
    parent = EpochGroupData(poc_start_block_height=40, epoch_index=1, sub_group_models=(A,),
                            expected_throughput_vector=(0,))
    assert validate_throughput_performance(parent) == ()


# --- pre-PoC selection ------------------------------------------------------------------------------

ALICE = member("gonka1alice", {A: [("a1", 40), ("a2", 30), ("a3", 30)]})  # weight 100, cap: serving < 50


def test_the_largest_node_under_the_cap_covers_the_demand_alone() -> None:
    # D = 200 x 1.25 = 250; a1 (40 < 50) serves 400 >= 250: done.
    (out,) = select_poc_slots((ALICE,), {A: 200}, epoch_index=3)
    assert serving_ids((out,)) == {"gonka1alice": ["a1"]}


def test_the_cap_stops_the_selection_short_of_the_demand() -> None:
    # D = 500: a1 gives 400; a2 or a3 would bring alice to 70, not below 50: nothing else is eligible.
    (out,) = select_poc_slots((ALICE,), {A: 400}, epoch_index=3)
    assert serving_ids((out,)) == {"gonka1alice": ["a1"]}


def test_without_demand_each_model_keeps_the_minimum_number_of_serving_nodes() -> None:
    bob = member("gonka1bob", {A: [("n1", 10), ("n2", 10), ("n3", 10), ("n4", 10)], B: [("n5", 4), ("n6", 6)]})
    out = select_poc_slots((bob,), {}, epoch_index=1, params=PrePocSelectionParams(min_serving_nodes_per_model=2))
    # Weight 50, cap: serving < 25. A: n1, n2 (20); n3 would make 30. B: the larger n6 would make 26, so
    # the largest eligible is n5 (24); nothing fits after it, so B stays one short of its minimum.
    assert serving_ids(out) == {"gonka1bob": ["n1", "n2", "n5"]}


def test_every_models_minimum_comes_before_an_earlier_models_demand() -> None:
    # Both weigh 100 (serving < 50). A's demand first would take a1 and c1 (40 each, the largest) and
    # leave neither b1 nor d1 (20) room: B would go dark. With every minimum first, one A node serves and
    # B's minimum then finds room with the other participant, whichever the seeded draws pick.
    alice = member("gonka1alice", {A: [("a1", 40), ("a2", 40)], B: [("b1", 20)]})
    bob = member("gonka1bob", {A: [("c1", 40), ("c2", 40)], B: [("d1", 20)]})
    for epoch in range(1, 21):
        picked = serving_ids(select_poc_slots((alice, bob), {A: 10_000}, epoch_index=epoch))
        served = {n for nodes in picked.values() for n in nodes}
        assert served & {"a1", "a2", "c1", "c2"} and served & {"b1", "d1"}, (epoch, picked)


def test_the_cap_is_strict_and_counts_every_model_already_visited() -> None:
    # weight 100: A's a1 (40) serves first; B's b1 (10) would bring alice to exactly 50, which is not below.
    alice = member("gonka1alice", {A: [("a1", 40)], B: [("b1", 10), ("b2", 50)]})
    assert serving_ids(select_poc_slots((alice,), {}, epoch_index=1)) == {"gonka1alice": ["a1"]}
    alice = member("gonka1alice", {A: [("a1", 40)], B: [("b1", 9), ("b2", 51)]})
    assert serving_ids(select_poc_slots((alice,), {}, epoch_index=1)) == {"gonka1alice": ["a1", "b1"]}


def test_nodes_without_weight_and_overflow_nodes_always_mine() -> None:
    carol = member("gonka1carol", {A: [("z", 0), ("a", 5), ("b", 5), ("c", 5)]}, serving=("z", "a", "b", "c"),
                   overflow=(("o", 10),))
    # weight 25, cap 12.5: a (5) then b (10); c would make 15. "z" has no weight, "o" no model.
    (out,) = select_poc_slots((carol,), {A: 1000}, epoch_index=1)
    assert serving_ids((out,)) == {"gonka1carol": ["a", "b"]}
    assert [n.poc_weight for n in out.all_nodes] == [0, 5, 5, 5, 10]
    assert [n.throughput for n in out.all_nodes] == [0, 50, 50, 50, 0]


def test_participants_are_drawn_in_proportion_to_their_weight() -> None:
    light = member("gonka1light", {A: [("l1", 40), ("l2", 30), ("l3", 30)]})  # weight 100
    heavy = member("gonka1heavy", {A: [("h1", 400), ("h2", 300), ("h3", 200)]})  # weight 900
    heavy_first = 0
    for epoch in range(1, 201):
        out = select_poc_slots((light, heavy), {}, epoch_index=epoch)  # no demand: one node per model
        picked = serving_ids(out)
        assert sum(len(v) for v in picked.values()) == 1
        heavy_first += picked["gonka1heavy"] == ["h1"]
    # 90% expected; the seeds are fixed, so this count is too (a uniform draw would give about 100).
    assert 160 <= heavy_first <= 195


def test_the_same_seed_gives_the_same_choice_and_input_order_does_not_matter() -> None:
    members = tuple(
        member(f"gonka1p{i}", {A: [(f"a{j}", 10 + i + j) for j in range(4)], B: [(f"b{j}", 7 * j + i) for j in range(3)]})
        for i in range(6)
    )
    first = select_poc_slots(members, {A: 300, B: 120}, epoch_index=9)
    again = select_poc_slots(tuple(reversed(members)), {A: 300, B: 120}, epoch_index=9)
    assert serving_ids(first) == serving_ids(again)
    other_epochs = {str(serving_ids(select_poc_slots(members, {A: 300, B: 120}, epoch_index=e))) for e in range(10, 20)}
    assert len(other_epochs) > 1  # the seed does decide


# --- properties -------------------------------------------------------------------------------------

weights = st.one_of(st.just(0), st.integers(1, 20), st.integers(1, 1000))
member_specs = st.lists(
    st.dictionaries(st.sampled_from((A, B, C)), st.lists(weights, min_size=1, max_size=5), min_size=1),
    min_size=1, max_size=6,
)
params_strategy = st.builds(
    PrePocSelectionParams,
    headroom=st.sampled_from([1.0, 1.25, 2.0]),
    min_serving_nodes_per_model=st.integers(0, 3),
    max_serving_fraction=st.sampled_from([0.3, 0.5, 0.7]),
)
demands = st.dictionaries(st.sampled_from((A, B, C)), st.integers(0, 20_000))


def _members(specs: list[dict[str, list[int]]]) -> tuple[ActiveParticipant, ...]:
    return tuple(
        member(f"gonka1p{i}", {m: [(f"{m}-{j}", w) for j, w in enumerate(ws)] for m, ws in spec.items()},
               serving=tuple(f"{m}-0" for m in spec))
        for i, spec in enumerate(specs)
    )


def _eligible_left(p: ActiveParticipant, model_id: str, serving: int, cap: Fraction) -> bool:
    return any(not n.is_active_during_poc and n.poc_weight > 0 and serving + n.poc_weight < cap * p.weight
               for n in p.nodes_for_model(model_id))


@settings(max_examples=300, deadline=None)
@given(specs=member_specs, real=demands, params=params_strategy, epoch=st.integers(1, 10_000))
def test_property_caps_minimum_demand_and_determinism(
    specs: list[dict[str, list[int]]], real: dict[str, int], params: PrePocSelectionParams, epoch: int
) -> None:
    members = _members(specs)
    out = select_poc_slots(members, real, epoch_index=epoch, params=params)
    assert out == select_poc_slots(members, real, epoch_index=epoch, params=params)
    cap = Fraction(repr(params.max_serving_fraction))
    serving = {p.index: sum(n.poc_weight for n in p.all_nodes if n.is_active_during_poc) for p in out}
    for before, after in zip(members, out, strict=True):
        # Same members, same nodes, weights and throughputs: only the flags change.
        assert [(n.node_id, n.poc_weight, n.throughput) for n in before.all_nodes] == \
               [(n.node_id, n.poc_weight, n.throughput) for n in after.all_nodes]
        # A participant's serving weight stays strictly below the cap.
        assert serving[after.index] == 0 or serving[after.index] < cap * after.weight
    for model_id in {m for p in out for m in p.models}:
        nodes = [n for p in out for n in p.nodes_for_model(model_id) if n.is_active_during_poc]
        any_left = any(_eligible_left(p, model_id, serving[p.index], cap) for p in out)
        # The minimum, and the demand with headroom, unless the caps leave no node of the model to add.
        assert len(nodes) >= params.min_serving_nodes_per_model or not any_left
        demand = real.get(model_id, 0) * Fraction(repr(params.headroom))
        assert sum(n.throughput for n in nodes) >= demand or not any_left
