"""The pre-PoC block on a running devnet under `poc_slot_policy: demand` (plan 6.4-6.6; DESIGN.md §6.1).

Default genesis with the demand policy: participants own, peer1, peer2 (no daemon runs here, so only the
peers are members); epoch 1 forms at 51 and is effective from 53, its pre-PoC block is 80 - 2 = 78, and
the PoC at 80 forms epoch 2 at 91.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from fractions import Fraction

import pytest

from dapi.chain.epochs import EndBlockStage
from dapi.devnet import SimulatedNetwork
from dapi.devnet.genesis import load_genesis
from dapi.devnet.ledger.inferences import Inference, ValidationDetails
from dapi.devnet.schedule.records import ActiveParticipant
from dapi.devnet.schedule.throughput import ThroughputShortfall, validate_throughput_performance

QWQ, QWEN7 = "Qwen/QwQ-32B", "Qwen/Qwen2.5-7B-Instruct"
PRE_POC = 78


@pytest.fixture
async def devnet() -> AsyncIterator[SimulatedNetwork]:
    genesis = load_genesis(block_time=0.02, overrides={"poc_slot_policy": "demand"})
    async with SimulatedNetwork(genesis) as running:
        yield running


def serving(active: tuple[ActiveParticipant, ...]) -> dict[str, dict[str, list[str]]]:
    """model → participant → its POC_SLOT node ids."""
    out: dict[str, dict[str, list[str]]] = {}
    for p in active:
        for model in p.models:
            ids = [n.node_id for n in p.nodes_for_model(model) if n.is_active_during_poc]
            if ids:
                out.setdefault(model, {})[p.index] = ids
    return out


def sub_group_flags(devnet: SimulatedNetwork, model: str, height: int) -> dict[tuple[str, str], bool]:
    sub = devnet.ledger.epoch_group(1, model, height=height)
    assert sub is not None
    return {(vw.member_address, n.node_id): n.is_active_during_poc for vw in sub.validation_weights for n in vw.ml_nodes}


async def test_without_demand_the_pre_poc_block_keeps_one_node_per_model_and_the_rest_mine(
    devnet: SimulatedNetwork,
) -> None:
    await devnet.wait_for_height(PRE_POC, timeout=60)
    devnet.pause_blocks()
    try:
        ledger = devnet.ledger
        block = ledger.block(PRE_POC)
        assert block is not None and EndBlockStage.PRE_POC_SELECTION in block.stages
        # Two blocks before every PoC, the first (genesis, nothing formed yet) included.
        assert [b.height for b in ledger.blocks if EndBlockStage.PRE_POC_SELECTION in b.stages] == [38, PRE_POC]
        formed = ledger.epoch_group(1, "", height=PRE_POC - 1)
        parent = ledger.epoch_group(1, "")
        assert formed is not None and parent is not None
        models = list(parent.sub_group_models)
        assert models == [QWQ, QWEN7]
        active = ledger.active_participants(1)
        # No inference ran: demand 0, so each model keeps exactly its minimum of one serving node.
        assert list(parent.real_throughput_vector) == [0, 0]
        chosen = serving(active)
        assert sorted(chosen) == models
        assert all(sum(len(ids) for ids in chosen[m].values()) == 1 for m in models)
        # Serving weight stays strictly below half of every participant's weight.
        for p in active:
            assert 2 * sum(n.poc_weight for n in p.all_nodes if n.is_active_during_poc) < p.weight
        # Both vectors: formation's (the weight rule's flags) and the one in force for the PoC.
        expected = [sum(n.throughput for p in active for n in p.nodes_for_model(m) if n.is_active_during_poc)
                    for m in models]
        assert list(parent.expected_throughput_vector) == expected
        at_formation = []
        for m in models:
            sub = ledger.epoch_group(1, m, height=PRE_POC - 1)
            assert sub is not None
            at_formation.append(sum(n.throughput for vw in sub.validation_weights for n in vw.ml_nodes
                                    if n.is_active_during_poc))
        assert list(formed.expected_throughput_vector) == at_formation != expected
        assert list(formed.real_throughput_vector) == []
        # The sub-groups on the wire say the same as the stored members; before the block they said formation's.
        changed = []
        for m in models:
            now = sub_group_flags(devnet, m, PRE_POC)
            assert now == {(p.index, n.node_id): n.is_active_during_poc for p in active for n in p.nodes_for_model(m)}
            changed.append(now != sub_group_flags(devnet, m, PRE_POC - 1))
        # Formation's flags may match the re-chosen ones for one model (the nodes' weights vary from run to
        # run), never for all: formation keeps about half of every participant serving, this one node a model.
        assert any(changed)
        report = devnet.report(1)
        assert report is not None
        assert report.poc_slot_policy == "demand"
        assert report.pre_poc_selection_height == PRE_POC
        assert list(report.real_throughput_vector) == [0, 0] and list(report.expected_throughput_vector) == expected
        assert report.throughput_shortfalls == ()
        assert {(m.address, n.node_id) for m in report.members for n in m.nodes if n.poc_slot} == {
            (p.index, n.node_id) for p in active for n in p.all_nodes if n.is_active_during_poc}
        assert block.events == ()  # no shortfall, no event
    finally:
        devnet.resume_blocks()

    # The PoC follows the new flags: the chosen nodes serve (no batch), every other node mines, and at the
    # next formation the chosen nodes keep their weight (plan 6.3 follows the flags in force).
    await devnet.wait_for_formed(2, timeout=60)
    devnet.pause_blocks()
    try:
        epoch1 = {(p.index, n.node_id): n for p in devnet.ledger.active_participants(1) for n in p.all_nodes}
        epoch2 = {(p.index, n.node_id): n for p in devnet.ledger.active_participants(2) for n in p.all_nodes}
        mined = {(b.participant_address, b.node_id) for b in devnet.ledger.batches(80)}
        kept = {key for key, n in epoch1.items() if n.is_active_during_poc}
        assert mined == set(epoch1) - kept
        for key in kept:
            assert epoch2[key].poc_weight == epoch1[key].poc_weight
    finally:
        devnet.resume_blocks()


async def test_measured_demand_draws_more_serving_capacity_and_a_shortfall_is_reported(
    devnet: SimulatedNetwork,
) -> None:
    # Completed inferences as the chain stores them, in the Inference phase of epoch 1 (51, 78]:
    # 27 x 1000 tokens of Qwen2.5-7B is 1000 tokens per block, so D = 1250 with the default headroom.
    await devnet.wait_for_height(60, timeout=60)
    devnet.pause_blocks()
    state = devnet.ledger.state
    for k in range(27):
        inference_id = f"demand-{k}"
        state.inferences[inference_id] = Inference(inference_id=inference_id, model=QWEN7,
                                                   prompt_token_count=400, completion_token_count=600)
        state.validation_details[(1, inference_id)] = ValidationDetails(
            epoch_id=1, inference_id=inference_id, executor_id="", executor_reputation=0, traffic_basis=0,
            executor_power=0, model=QWEN7, total_power=0, created_at_block_height=60)
    devnet.resume_blocks()
    await devnet.wait_for_height(PRE_POC, timeout=60)
    devnet.pause_blocks()
    try:
        parent = devnet.ledger.epoch_group(1, "")
        assert parent is not None
        assert list(parent.real_throughput_vector) == [0, 1000]
        active = devnet.ledger.active_participants(1)
        qwen_nodes = [(p, n) for p in active for n in p.nodes_for_model(QWEN7)]
        chosen = [n for _, n in qwen_nodes if n.is_active_during_poc]
        capacity = sum(n.throughput for n in chosen)
        assert list(parent.expected_throughput_vector)[1] == capacity
        assert len(chosen) > 1  # demand, not just the minimum
        serving_weight = {p.index: sum(n.poc_weight for n in p.all_nodes if n.is_active_during_poc) for p in active}
        eligible_left = [n for p, n in qwen_nodes if not n.is_active_during_poc
                         and serving_weight[p.index] + n.poc_weight < Fraction(p.weight, 2)]
        assert capacity >= 1250 or not eligible_left
        shortfalls = validate_throughput_performance(parent)
        assert shortfalls == ((ThroughputShortfall(QWEN7, 1000, capacity),) if capacity < 1000 else ())
        block = devnet.ledger.block(PRE_POC)
        assert block is not None
        assert [dict(e.attributes) for e in block.events if e.type == "throughput_shortfall"] == [
            {"epoch_index": "1", "model_id": s.model_id, "demand": str(s.demand), "capacity": str(s.capacity)}
            for s in shortfalls]
        report = devnet.report(1)
        assert report is not None and report.throughput_shortfalls == shortfalls
    finally:
        devnet.resume_blocks()
