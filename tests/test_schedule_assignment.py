"""Model assignment, the weight-based 50% rule and the half-nodes policy (plan 5.9, 6.2.1, 6.2.2; DESIGN.md §6)."""

from __future__ import annotations

import hashlib

import pytest

from dapi.devnet.schedule.assignment import (
    ModelAssignment,
    PocSlotPolicy,
    apply_half_nodes_rule,
    apply_poc_slot_policy,
    apply_weight_rule,
    assign_models,
    model_visit_order,
    seeded_permutation,
)
from dapi.devnet.schedule.models import GENESIS_MODELS, ModelRegistry
from dapi.devnet.schedule.records import HardwareNode, MLNodeInfo, ModelMLNodes

QWQ = "Qwen/QwQ-32B"  # throughput_per_nonce 1000
Q7 = "Qwen/Qwen2.5-7B-Instruct"  # throughput_per_nonce 10000
REGISTRY = ModelRegistry.of(GENESIS_MODELS)
# In epoch 1 the seeded visit order (sha256("1:<address>")) is Q7 then QwQ for alice, QwQ then Q7 for bob.
ALICE, BOB = "gonka1alice", "gonka1bob"


def hw(local_id: str, *models: str) -> HardwareNode:
    return HardwareNode(local_id=local_id, models=models)


def serving(assignment: ModelAssignment) -> dict[str, list[str]]:
    """model id → ids of its nodes with POC_SLOT = true (they keep serving during PoC)."""
    return {m: [n.node_id for n in assignment.nodes_of(m) if n.is_active_during_poc] for m in assignment.models}


def mining(assignment: ModelAssignment) -> list[str]:
    return [n.node_id for g in assignment.ml_nodes for n in g.ml_nodes if not n.is_active_during_poc]


# --- assignment: one model per node, overflow at the end ----------------------------------------------------


def test_each_node_goes_to_the_first_governance_model_of_its_own_list() -> None:
    # Structure of chain-logic.md §6.3 D: nodes n1:100, n2:200, n3:300, n4:400, ghost:50; hw n1 [Q7, QwQ],
    # n2 [Q7], n3 [QwQ], n4 ["unregistered/model"]. The reference puts n1 in QwQ (first governance model in
    # id order); the seed plan puts it in Q7, the first governance model in n1's own list.
    hardware = [hw("n1", Q7, QWQ), hw("n2", Q7), hw("n3", QWQ), hw("n4", "unregistered/model")]
    result = assign_models({"n1": 100, "n2": 200, "n3": 300, "n4": 400, "ghost": 50}, hardware, REGISTRY)
    assert result.models == (QWQ, Q7)  # id order; models[i] ↔ ml_nodes[i]
    assert result.ml_nodes == (
        ModelMLNodes(
            ml_nodes=(MLNodeInfo(node_id="n3", poc_weight=300, throughput=300_000, timeslot_allocation=(True, True)),)
        ),
        ModelMLNodes(
            ml_nodes=(
                MLNodeInfo(node_id="n1", poc_weight=100, throughput=1_000_000, timeslot_allocation=(True, True)),
                MLNodeInfo(node_id="n2", poc_weight=200, throughput=2_000_000, timeslot_allocation=(True, True)),
            )
        ),
        # Overflow: no governance model (n4) or no hardware declaration (ghost): no throughput, never serving.
        ModelMLNodes(
            ml_nodes=(
                MLNodeInfo(node_id="n4", poc_weight=400, timeslot_allocation=(True, False)),
                MLNodeInfo(node_id="ghost", poc_weight=50, timeslot_allocation=(True, False)),
            )
        ),
    )


def test_unknown_models_earlier_in_the_list_are_skipped() -> None:
    result = assign_models({"a": 1}, [hw("a", "gone/model", QWQ, Q7)], REGISTRY)
    assert result.models == (QWQ,)


def test_no_overflow_list_when_every_node_has_a_model() -> None:
    result = assign_models({"a": 1, "b": 2}, [hw("a", QWQ), hw("b", QWQ)], REGISTRY)
    assert len(result.ml_nodes) == len(result.models) == 1
    assert result.overflow == ()


def test_one_model_two_nodes_like_the_chains_unit_test() -> None:
    # chain-logic.md §6.3 A / §17 TestSetModelsForParticipants_OneModelTwoNodes: 2 governance models, hw mlnode1
    # and mlnode2 both QwQ, weights 29/28 → models [QwQ], one list with both nodes, one [T,F] and one [T,T].
    assignment = assign_models({"mlnode1": 29, "mlnode2": 28}, [hw("mlnode1", QWQ), hw("mlnode2", QWQ)], REGISTRY)
    result = apply_weight_rule(
        assignment, epoch_index=1, participant_address="gonka1xmwh48ugfvd2ktmy0t90ueuzqxdk4g0anwe3v6"
    )
    assert result.models == (QWQ,)
    assert [n.timeslot_allocation for n in result.nodes_of(QWQ)] == [(True, False), (True, True)]
    # Weight rule: 29 mined > 57/2, so mlnode2 (28, just below half) keeps serving.


def test_one_node_one_model_like_the_chains_unit_test() -> None:
    # chain-logic.md §17 TestSetModelsForParticipants_OneNodeOneModel: 1 node (29) → allocation [T,F].
    assignment = assign_models({"n": 29}, [hw("n", Q7)], REGISTRY)
    for policy in PocSlotPolicy:
        result = apply_poc_slot_policy(assignment, epoch_index=1, participant_address="p", policy=policy)
        assert result.nodes_of(Q7)[0].timeslot_allocation == (True, False)


# --- model visit order ----------------------------------------------------------------------------------


def test_model_visit_order_is_seeded_by_epoch_and_participant() -> None:
    # Our rule, documented in DESIGN.md §6: sorted ids shuffled with seed sha256(f"{epoch_index}:{address}").
    assert model_visit_order(1, ALICE, [QWQ, Q7]) == (Q7, QWQ)
    assert model_visit_order(1, BOB, [QWQ, Q7]) == (QWQ, Q7)
    assert model_visit_order(2, ALICE, [QWQ, Q7]) == (QWQ, Q7)  # a new epoch, a new order
    assert model_visit_order(1, ALICE, [Q7, QWQ]) == (Q7, QWQ)  # independent of the input order
    orders = {model_visit_order(e, ALICE, ["a", "b", "c", "d"]) for e in range(1, 60)}
    assert len(orders) > 10  # it really shuffles


def test_seeded_permutation_is_our_fixed_sha256_fisher_yates() -> None:
    # Pinned so that the devnet's choices never change silently (not Go's math/rand: DESIGN.md §6).
    seed = hashlib.sha256(b"7_gonka1participantexample_Qwen/QwQ-32B").digest()
    assert [seeded_permutation(seed, n) for n in range(1, 6)] == [
        (0,),
        (0, 1),
        (0, 2, 1),
        (2, 0, 1, 3),
        (4, 0, 3, 1, 2),
    ]
    for n in range(9):
        assert sorted(seeded_permutation(seed, n)) == list(range(n))


# --- the weight-based 50% rule: scenario tables ---------------------------------------------------------------

# (name, participant, hardware, node weights, expected POC_SLOT=true per model, expected mining nodes)
WEIGHT_RULE_SCENARIOS = [
    # One node per model, two models of unequal weight. Bob visits QwQ first: q mines (carry 100 - 50 = 50),
    # and 50 > 60/2 lets the lighter s keep serving (60 < 160/2).
    (
        "one node per model, carry lets the lighter serve",
        BOB,
        [hw("q", QWQ), hw("s", Q7)],
        {"q": 100, "s": 60},
        {QWQ: [], Q7: ["s"]},
        ["q"],
    ),
    # Alice visits Q7 first: s mines (carry 30), 30 is not > 100/2, so q mines too.
    (
        "one node per model, other order: both mine",
        ALICE,
        [hw("q", QWQ), hw("s", Q7)],
        {"q": 100, "s": 60},
        {QWQ: [], Q7: []},
        ["q", "s"],
    ),
    # A tie at exactly half mines: carry 30 is not > 60/2 (serving 60 would be exactly half of 120).
    ("tie at exactly half mines", BOB, [hw("q", QWQ), hw("s", Q7)], {"q": 60, "s": 60}, {QWQ: [], Q7: []}, ["q", "s"]),
    # Two equal nodes in one model: 50 switched is not > 100/2, so the second mines too.
    ("tie inside one model mines", BOB, [hw("a", QWQ), hw("b", QWQ)], {"a": 50, "b": 50}, {QWQ: []}, ["a", "b"]),
    # Many nodes of unequal weight in one model (list order): a 50 is not > 50, a + b = 80 is → c, d serve 20.
    (
        "many unequal nodes",
        BOB,
        [hw("a", QWQ), hw("b", QWQ), hw("c", QWQ), hw("d", QWQ)],
        {"a": 50, "b": 30, "c": 15, "d": 5},
        {QWQ: ["c", "d"]},
        ["a", "b"],
    ),
    # Many unequal nodes across two models. Bob: QwQ (a10 b20 c30, T 60) mines all (10, 30 are not > 30;
    # 60 is), carry 30 > 50/2 → both Q7 nodes serve (50 < 110/2).
    (
        "many nodes, two models, QwQ first",
        BOB,
        [hw("a", QWQ), hw("b", QWQ), hw("c", QWQ), hw("d", Q7), hw("e", Q7)],
        {"a": 10, "b": 20, "c": 30, "d": 25, "e": 25},
        {QWQ: [], Q7: ["d", "e"]},
        ["a", "b", "c"],
    ),
    # Alice: Q7 (d25 e25, T 50): 25 is not > 25, 50 is → carry 25; QwQ: 25 + 10 > 30 → b, c serve (50).
    (
        "many nodes, two models, Q7 first",
        ALICE,
        [hw("a", QWQ), hw("b", QWQ), hw("c", QWQ), hw("d", Q7), hw("e", Q7)],
        {"a": 10, "b": 20, "c": 30, "d": 25, "e": 25},
        {QWQ: ["b", "c"], Q7: []},
        ["a", "d", "e"],
    ),
    # New zero-weight nodes always mine and are not counted: T = 90, a 40 is not > 45, a + b = 70 is → c serves.
    (
        "new zero-weight nodes mine",
        BOB,
        [hw("z1", QWQ), hw("a", QWQ), hw("z2", QWQ), hw("b", QWQ), hw("c", QWQ)],
        {"z1": 0, "a": 40, "z2": 0, "b": 30, "c": 20},
        {QWQ: ["c"]},
        ["z1", "a", "z2", "b"],
    ),
    # A model with only new nodes: they mine (T = 0, nothing to split).
    (
        "model with only zero-weight nodes",
        BOB,
        [hw("q", QWQ), hw("z", Q7)],
        {"q": 10, "z": 0},
        {QWQ: [], Q7: []},
        ["q", "z"],
    ),
    # Overflow nodes (no governance model) always mine and do not change the split of the model nodes.
    (
        "overflow nodes mine",
        BOB,
        [hw("a", QWQ), hw("b", QWQ), hw("o", "unregistered/model")],
        {"a": 30, "b": 20, "o": 1000, "ghost": 7},
        {QWQ: ["b"]},
        ["a", "o", "ghost"],
    ),
    # chain-logic.md §6.3 F structure (a..e with weights 1..5, one model): 1, 3, 6 are not > 7.5, 10 is → e serves.
    (
        "scenario F by weight",
        "gonka1participantexample",
        [hw(x, QWQ) for x in "abcde"],
        {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5},
        {QWQ: ["e"]},
        ["a", "b", "c", "d"],
    ),
]


@pytest.mark.parametrize(
    ("name", "participant", "hardware", "weights", "expected_serving", "expected_mining"),
    WEIGHT_RULE_SCENARIOS,
    ids=[s[0] for s in WEIGHT_RULE_SCENARIOS],
)
def test_weight_rule_scenarios(
    name: str,
    participant: str,
    hardware: list[HardwareNode],
    weights: dict[str, int],
    expected_serving: dict[str, list[str]],
    expected_mining: list[str],
) -> None:
    result = apply_weight_rule(
        assign_models(weights, hardware, REGISTRY), epoch_index=1, participant_address=participant
    )
    assert serving(result) == expected_serving
    assert mining(result) == expected_mining
    # Timeslots are [PRE_POC_SLOT=true, POC_SLOT=?] for every node.
    assert all(n.timeslot_allocation[0] for g in result.ml_nodes for n in g.ml_nodes)


def test_carry_can_keep_all_nodes_of_a_model_serving() -> None:
    # After a heavy model mined, a light model with several nodes keeps every node serving.
    hardware = [hw("big", QWQ), hw("s1", Q7), hw("s2", Q7), hw("s3", Q7)]
    result = apply_weight_rule(
        assign_models({"big": 100, "s1": 10, "s2": 10, "s3": 10}, hardware, REGISTRY),
        epoch_index=1,
        participant_address=BOB,
    )
    assert serving(result) == {QWQ: [], Q7: ["s1", "s2", "s3"]}  # 30 < 130/2


# --- the reference's half-nodes policy ------------------------------------------------------------------


def test_half_nodes_policy_scenario_a() -> None:
    # chain-logic.md §6.3 A structure: two nodes in QwQ → exactly one keeps serving, whatever the weights.
    assignment = assign_models({"mlnode1": 29, "mlnode2": 28}, [hw("mlnode1", QWQ), hw("mlnode2", QWQ)], REGISTRY)
    result = apply_poc_slot_policy(
        assignment,
        epoch_index=1,
        policy=PocSlotPolicy.HALF_NODES,
        participant_address="gonka1xmwh48ugfvd2ktmy0t90ueuzqxdk4g0anwe3v6",
    )
    assert len(serving(result)[QWQ]) == 1
    assert len(mining(result)) == 1


def test_half_nodes_policy_scenario_d() -> None:
    # chain-logic.md §6.3 D structure, with the seed plan's assignment (n1 in Q7 with n2): of Q7's two nodes one
    # serves; QwQ's single node n3 mines (⌊1/2⌋ = 0); overflow n4 and ghost mine.
    hardware = [hw("n1", Q7, QWQ), hw("n2", Q7), hw("n3", QWQ), hw("n4", "unregistered/model")]
    assignment = assign_models({"n1": 100, "n2": 200, "n3": 300, "n4": 400, "ghost": 50}, hardware, REGISTRY)
    result = apply_half_nodes_rule(
        assignment, epoch_index=4, participant_address="gonka1xmwh48ugfvd2ktmy0t90ueuzqxdk4g0anwe3v6"
    )
    assert serving(result)[QWQ] == []
    assert len(serving(result)[Q7]) == 1
    assert [n.is_active_during_poc for n in result.overflow] == [False, False]


def test_half_nodes_policy_scenario_f() -> None:
    # chain-logic.md §6.3 F structure: U=7, "gonka1participantexample", 5 nodes a..e (w1..5) in QwQ → 2 serve.
    # The reference picks d and e with Go's math/rand; our sha256 shuffle (4, 0, 3, 1, 2) picks e and a.
    assignment = assign_models({x: i + 1 for i, x in enumerate("abcde")}, [hw(x, QWQ) for x in "abcde"], REGISTRY)
    result = apply_poc_slot_policy(
        assignment, epoch_index=7, participant_address="gonka1participantexample", policy="half-nodes"
    )  # the config string works as the policy too
    assert serving(result) == {QWQ: ["a", "e"]}
    assert mining(result) == ["b", "c", "d"]


def test_half_nodes_counts_nodes_not_weight() -> None:
    # chain-logic.md §15.9: one node per model never serves under the node-count rule, unlike the weight rule.
    assignment = assign_models({"q": 100, "s": 60}, [hw("q", QWQ), hw("s", Q7)], REGISTRY)
    half = apply_half_nodes_rule(assignment, epoch_index=1, participant_address=BOB)
    assert serving(half) == {QWQ: [], Q7: []}
    by_weight = apply_weight_rule(assignment, epoch_index=1, participant_address=BOB)
    assert serving(by_weight) == {QWQ: [], Q7: ["s"]}


# --- the "none" policy: the network before the plan ---------------------------------------------------


def test_none_policy_lets_every_node_mine() -> None:
    # chain-logic.md §6.3 D structure again: under "none" nobody keeps serving, overflow and ghost included.
    hardware = [hw("n1", Q7, QWQ), hw("n2", Q7), hw("n3", QWQ), hw("n4", "unregistered/model")]
    assignment = assign_models({"n1": 100, "n2": 200, "n3": 300, "n4": 400, "ghost": 50}, hardware, REGISTRY)
    result = apply_poc_slot_policy(assignment, epoch_index=4, participant_address=BOB, policy="none")
    assert serving(result) == {Q7: [], QWQ: []}
    assert sorted(mining(result)) == ["ghost", "n1", "n2", "n3", "n4"]
    # The same nodes, in the same lists: only the flags differ from the weight rule's answer.
    weight = apply_poc_slot_policy(assignment, epoch_index=4, participant_address=BOB, policy="weight")
    assert [[n.node_id for n in g.ml_nodes] for g in result.ml_nodes] == [
        [n.node_id for n in g.ml_nodes] for g in weight.ml_nodes
    ]
