"""Node registry: registration rules, NodeNums (fix 10), removal, admin state (fix 1, fix 4), node JSON."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from broker_fakes import (
    INFERENCE_UP,
    MODEL_A,
    MODEL_B,
    PARAMS,
    FakeChain,
    gov_model,
    make_broker,
    ml_node,
    sim_node_config,
    wait_for,
)

from dapi.broker import (
    Broker,
    DuplicateNode,
    EpochState,
    GovernanceUnavailable,
    InvalidModels,
    InvalidNodeConfig,
    NodeNotFound,
    NodeStatus,
    PocStatus,
    ReconcileInfo,
    node_response_json,
)
from dapi.broker.nodenums import FILE_NAME, NodeNumStoreError
from dapi.chain.epochs import Epoch
from dapi.chain.errors import ChainUnavailable
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.gen.inference.inference.model_pb2 import Model


@pytest.fixture
def governance_models() -> list[Model]:
    return [gov_model(MODEL_A, ["--quantization", "fp8"]), gov_model(MODEL_B)]


# --- registration and NodeNums --------------------------------------------------------------------


async def test_config_nodes_get_numbers_in_order_and_a_rejection_consumes_none(
    broker: Broker, sim: SimMLNodeServer
) -> None:
    configs = [
        sim_node_config(sim, "n1"),
        sim_node_config(sim, "bad", {"not-a-governance-model": [], MODEL_A: [], "also-bad": []}),
        sim_node_config(sim, "n2", {MODEL_B: []}),
    ]
    results = await broker.register_many(configs)
    assert [getattr(r, "node_num", None) for r in results] == [1, None, 2]
    error = results[1]
    assert isinstance(error, InvalidModels)
    assert error.bad_ids == ("also-bad", "not-a-governance-model")
    assert "also-bad" in str(error) and "not-a-governance-model" in str(error)
    assert [r.node.id for r in broker.nodes()] == ["n1", "n2"]
    # A node added later through the admin API gets the next number.
    later = await broker.register(sim_node_config(sim, "n3"))
    assert later.node_num == 3


async def test_a_node_whose_address_is_not_a_url_is_rejected_without_a_number(
    broker: Broker, sim: SimMLNodeServer
) -> None:
    bad = sim_node_config(sim, "n1").model_copy(update={"host": ""})
    with pytest.raises(InvalidNodeConfig, match="n1"):
        await broker.register(bad)
    assert (await broker.register(sim_node_config(sim, "n1"))).node_num == 1


async def test_a_node_without_models_passes_validation(broker: Broker, sim: SimMLNodeServer) -> None:
    node = await broker.register(sim_node_config(sim, "empty", {}))
    assert node.node_num == 1


async def test_reregistering_an_id_is_rejected_and_leaves_the_node_untouched(
    broker: Broker, sim: SimMLNodeServer
) -> None:
    original = await broker.register(sim_node_config(sim, "n1", max_concurrent=7))
    with pytest.raises(DuplicateNode) as info:
        await broker.register(sim_node_config(sim, "n1", {MODEL_B: []}, max_concurrent=1))
    assert "n1" in str(info.value)
    (view,) = broker.nodes()
    assert view.node == original
    assert view.node.config.max_concurrent == 7 and list(view.node.config.models) == [MODEL_A]
    # Fix 4: no second worker; the first one still serves this node.
    assert broker.node_by_num(1) == original and broker.node_by_num(2) is None


async def test_duplicates_within_a_batch_and_concurrent_registrations(broker: Broker, sim: SimMLNodeServer) -> None:
    results = await broker.register_many([sim_node_config(sim, "n1"), sim_node_config(sim, "n1")])
    assert getattr(results[0], "node_num", None) == 1 and isinstance(results[1], DuplicateNode)
    first, second = await asyncio.gather(
        broker.register_many([sim_node_config(sim, "n2")]), broker.register_many([sim_node_config(sim, "n2")])
    )
    outcomes = [first[0], second[0]]
    assert sum(isinstance(r, DuplicateNode) for r in outcomes) == 1
    assert [r.node.id for r in broker.nodes()] == ["n1", "n2"]


async def test_registration_fails_cleanly_when_governance_cannot_be_read(
    broker: Broker, chain: FakeChain, sim: SimMLNodeServer
) -> None:
    chain.fail_next("models_all", ChainUnavailable("chain down"))
    with pytest.raises(GovernanceUnavailable) as info:
        await broker.register(sim_node_config(sim, "n1"))
    assert info.value.retriable and "chain down" in str(info.value)
    assert broker.nodes() == []
    assert (await broker.register(sim_node_config(sim, "n1"))).node_num == 1  # no number was consumed


async def test_node_nums_survive_a_restart(chain: FakeChain, sim: SimMLNodeServer, tmp_path: Path) -> None:
    first = make_broker(chain, tmp_path)
    await first.register_many([sim_node_config(sim, n) for n in ("n1", "n2", "n3")])
    assert await first.remove("n2")
    assert (await first.register(sim_node_config(sim, "n4"))).node_num == 4  # 2 is not handed to another id
    await first.stop()

    second = make_broker(chain, tmp_path)
    await second.start()
    # Config order changed and n2 was removed: numbers still follow the ids.
    results = await second.register_many([sim_node_config(sim, n) for n in ("n3", "n1", "n5", "n2")])
    assert [getattr(r, "node_num", None) for r in results] == [3, 1, 5, 2]
    await second.stop()
    stored = json.loads((tmp_path / FILE_NAME).read_text())
    assert stored["nodes"] == {"n1": 1, "n2": 2, "n3": 3, "n4": 4, "n5": 5}


@pytest.mark.parametrize("text", [
    "{not json",
    json.dumps({"nodes": {"n1": 1}, "secrets": {"n1": 7}}),
    json.dumps({"nodes": {"n1": 1, "n2": 2}, "secrets": {"n1": "same", "n2": "same"}}),
])
async def test_a_corrupt_node_num_file_stops_the_start(chain: FakeChain, tmp_path: Path, text: str) -> None:
    (tmp_path / FILE_NAME).write_text(text)
    broker = make_broker(chain, tmp_path)
    with pytest.raises(NodeNumStoreError, match=FILE_NAME):
        await broker.start()
    await broker.stop()


async def test_registration_takes_the_latest_epoch_as_admin_epoch(broker: Broker, sim: SimMLNodeServer) -> None:
    broker.set_epoch_state(EpochState.at_height(Epoch(3, 120), PARAMS, 125))
    await broker.register(sim_node_config(sim, "n1"))
    view = broker.node("n1")
    assert view is not None and (view.state.admin_state.enabled, view.state.admin_state.epoch) == (True, 3)
    assert (view.state.intended_status, view.state.current_status) == (NodeStatus.UNKNOWN, NodeStatus.UNKNOWN)
    assert (view.state.poc_intended_status, view.state.poc_current_status) == (PocStatus.IDLE, PocStatus.IDLE)
    assert view.state.epoch_models == {} and view.state.epoch_ml_nodes == {}


# --- removal ---------------------------------------------------------------------------------------


async def test_add_and_remove_nodes(broker: Broker, sim: SimMLNodeServer) -> None:
    """TestNodeWorkGroup_AddRemoveWorkers, at the broker level."""
    n1 = await broker.register(sim_node_config(sim, "node-1"))
    n2 = await broker.register(sim_node_config(sim, "node-2"))
    assert broker.node_by_num(1) == n1 and broker.node_by_num(2) == n2
    assert await broker.remove("node-1") is True
    assert broker.node("node-1") is None and broker.node_by_num(1) is None
    assert broker.node("node-2") is not None
    assert await broker.remove("node-1") is False


async def test_remove_cancels_a_hung_job_without_waiting_for_it(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    broker.set_epoch_state(EpochState.at_height(Epoch(1, 40), PARAMS, 60))
    sim.set_fault("n1", timeout=True, path_prefix=INFERENCE_UP)  # inference/up never answers
    assert broker.inference_up_all().accepted
    await broker.reconcile_now()
    await wait_for(lambda: any(c.path == INFERENCE_UP for c in sim.calls("n1")), what="inference/up to be held")
    # Returns although the job's HTTP call would hang for the client's 15-minute deadline.
    assert await asyncio.wait_for(broker.remove("n1"), timeout=30) is True
    assert broker.nodes() == []


# --- admin state -----------------------------------------------------------------------------------


async def test_admin_state_of_an_unknown_node_raises_and_nothing_hangs(broker: Broker, sim: SimMLNodeServer) -> None:
    """Fix 1: the reference replied with an error and kept its write lock (deadlock)."""
    with pytest.raises(NodeNotFound, match="node not found: ghost"):
        broker.set_admin_state("ghost", False)
    await broker.register(sim_node_config(sim, "n1"))
    assert broker.set_admin_state("n1", False).enabled is False
    assert len(broker.nodes()) == 1


async def test_admin_state_records_the_latest_epoch(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    broker.set_epoch_state(EpochState.at_height(Epoch(5, 200), PARAMS, 230))
    broker.set_admin_state("n1", False)
    view = broker.node("n1")
    assert view is not None and (view.state.admin_state.enabled, view.state.admin_state.epoch) == (False, 5)


# --- the admin API's node JSON (reference/http.md §3.3) -------------------------------------------


async def test_node_response_json_shape(broker: Broker, sim: SimMLNodeServer) -> None:
    config = sim_node_config(sim, "n1", {MODEL_A: ["--tp", "2"]}, max_concurrent=3, version="v9")
    await broker.register(config)
    view = broker.nodes()[0]
    view.state.epoch_models = {
        MODEL_A: Model(id=MODEL_A, units_of_compute_per_token=18446744073709551615, model_args=["--x"], v_ram=0)
    }
    view.state.epoch_ml_nodes = {MODEL_A: ml_node("n1", True, False, weight=12)}
    view.state.reconcile_info = ReconcileInfo(NodeStatus.POC, PocStatus.GENERATING, 42)
    view.state.intended_status = NodeStatus.POC
    body = json.loads(json.dumps(node_response_json(view)))
    assert body["node"] == {
        "host": sim.host,
        "inference_segment": "/nodes/n1",
        "inference_port": sim.port,
        "poc_segment": "/nodes/n1",
        "poc_port": sim.port,
        "models": {MODEL_A: {"args": ["--tp", "2"]}},
        "id": "n1",
        "max_concurrent": 3,
        "node_num": 1,
        "hardware": [{"type": "H100", "count": 8}],
        "version": "v9",
    }
    state = body["state"]
    assert list(state) == [
        "intended_status",
        "current_status",
        "reconcile_info",
        "poc_intended_status",
        "poc_current_status",
        "lock_count",
        "failure_reason",
        "status_timestamp",
        "admin_state",
        "epoch_models",
        "epoch_ml_nodes",
    ]
    assert (state["intended_status"], state["current_status"]) == ("POC", "UNKNOWN")
    assert state["reconcile_info"] == {"status": 2, "poc_status": "GENERATING", "training_task_id": 0}
    assert state["admin_state"] == {"enabled": True, "epoch": 0}
    # Chain JSON: zero fields omitted, uint64 a number (not a string), field order of the proto.
    assert state["epoch_models"] == {
        MODEL_A: {"id": MODEL_A, "units_of_compute_per_token": 18446744073709551615, "model_args": ["--x"]}
    }
    assert state["epoch_ml_nodes"] == {
        MODEL_A: {"node_id": "n1", "poc_weight": 12, "timeslot_allocation": [True, False]}
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", state["status_timestamp"])


async def test_node_list_is_a_snapshot(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    snapshot = broker.nodes()[0]
    snapshot.state.lock_count = 99
    snapshot.state.epoch_models["x"] = Model(id="x")
    live = broker.nodes()[0]
    assert live.state.lock_count == 0 and live.state.epoch_models == {}


async def test_reconcile_info_is_omitted_when_no_job_is_in_flight(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    assert "reconcile_info" not in node_response_json(broker.nodes()[0])["state"]
