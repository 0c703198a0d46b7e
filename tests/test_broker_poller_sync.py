"""Status polling (reference/broker.md §5.7, fix 7) and the hardware diff sync (§5.6, fix 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
from broker_fakes import (
    FAST,
    INFERENCE_UP,
    INIT_GENERATE,
    MODEL_A,
    MODEL_B,
    PARAMS,
    PARTICIPANT,
    FakeChain,
    ListTxSink,
    gov_model,
    make_broker,
    paths,
    settle,
    sim_node_config,
    status_of,
    wait_for,
)

from dapi.broker import Broker, EpochState, NodeStatus, PocStatus
from dapi.chain.epochs import Epoch
from dapi.chain.errors import ChainUnavailable
from dapi.config import BrokerConfig
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.gen.inference.inference.hardware_node_pb2 import HardwareNodes
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitHardwareDiff

INFERENCE = EpochState.at_height(Epoch(1, 40), PARAMS, 60)
POC = EpochState.at_height(Epoch(2, 80), PARAMS, 81)


@pytest.fixture
def governance_models() -> list[Model]:
    return [gov_model(MODEL_A), gov_model(MODEL_B)]


@pytest.fixture
def broker_tx_sink(chain: FakeChain) -> ListTxSink:
    return ListTxSink(chain=chain)


# --- status polling --------------------------------------------------------------------------------


async def test_a_registered_node_is_polled_to_its_real_state(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    assert await broker.poll_now() == 1
    assert status_of(broker, "n1") == (NodeStatus.UNKNOWN, NodeStatus.STOPPED)
    assert await broker.poll_now() == 0  # polled recently and known: not due yet


async def test_started_broker_polls_new_nodes_by_itself(chain: FakeChain, sim: SimMLNodeServer, tmp_path: Path) -> None:
    async with make_broker(chain, tmp_path) as broker:
        await broker.register(sim_node_config(sim, "n1"))
        await wait_for(lambda: status_of(broker, "n1")[1] is NodeStatus.STOPPED, what="first poll")


async def test_an_unhealthy_serving_node_is_marked_failed_and_brought_back(
    broker: Broker, sim: SimMLNodeServer
) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    broker.set_epoch_state(INFERENCE)
    broker.inference_up_all()
    await settle(broker)
    assert status_of(broker, "n1") == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
    sim.set_fault("n1", status=503, path_prefix="/health")
    await broker.poll_now(force=True)
    view = broker.node("n1")
    assert view is not None and view.state.current_status is NodeStatus.FAILED
    assert "not healthy" in view.state.failure_reason
    sim.clear_fault("n1")
    await settle(broker)  # the reconciler sees FAILED ≠ INFERENCE and repairs it
    assert status_of(broker, "n1") == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)


async def test_an_unreachable_node_is_isolated(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    sim.set_fault("n1", refuse=True)
    await broker.poll_now()
    view = broker.node("n1")
    assert view is not None and view.state.current_status is NodeStatus.FAILED
    assert "state query failed" in view.state.failure_reason


async def test_the_poller_never_overwrites_a_node_with_a_job_in_flight(broker: Broker, sim: SimMLNodeServer) -> None:
    """Fix 7: while vLLM loads, state says INFERENCE and /health fails; the reference marked it FAILED."""
    sim.add_node("n1", load_delay=60)  # the model loads for the whole test
    await broker.register(sim_node_config(sim, "n1"))
    await broker.poll_now()
    broker.set_epoch_state(INFERENCE)
    broker.inference_up_all()
    await broker.reconcile_now()
    await wait_for(lambda: sim.node("n1").model == MODEL_A, what="model loading")
    assert sim.node("n1").inference_ready is False
    assert await broker.poll_now(force=True) == 0
    view = broker.node("n1")
    assert view is not None and view.state.current_status is NodeStatus.STOPPED
    assert view.state.reconcile_info is not None and view.state.failure_reason == ""


async def test_a_started_broker_loads_a_slow_model_without_a_false_failure(
    chain: FakeChain, sim: SimMLNodeServer, tmp_path: Path
) -> None:
    settings = BrokerConfig(status_poll_interval=0.01, hardware_sync_interval=60, job_timeout=10, retry_backoff_max=60)
    sim.add_node("n1", load_delay=0.3)
    seen: set[NodeStatus] = set()
    async with make_broker(chain, tmp_path, settings=settings, retry_backoff_base=60) as broker:
        await broker.register(sim_node_config(sim, "n1"))
        await wait_for(lambda: status_of(broker, "n1")[1] is NodeStatus.STOPPED)
        broker.set_epoch_state(INFERENCE)
        broker.inference_up_all()

        def serving() -> bool:
            seen.add(status_of(broker, "n1")[1])
            return status_of(broker, "n1")[1] is NodeStatus.INFERENCE

        await wait_for(serving, what="the node to serve")
    assert NodeStatus.FAILED not in seen
    assert paths(sim, "n1", INFERENCE_UP) == 1  # never failed, so never retried


async def test_polling_reads_the_poc_sub_status_so_a_restart_does_not_reinit(
    chain: FakeChain, sim: SimMLNodeServer, tmp_path: Path
) -> None:
    first = make_broker(chain, tmp_path)
    await first.register(sim_node_config(sim, "n1"))
    first.set_epoch_state(POC)
    first.start_poc()
    await settle(first)
    await first.stop()
    assert paths(sim, "n1", INIT_GENERATE) == 1

    # The daemon restarts mid-PoC; the ML node is still generating under the same number.
    second = make_broker(chain, tmp_path)
    try:
        await second.register(sim_node_config(sim, "n1"))
        await second.poll_now()
        view = second.node("n1")
        assert view is not None
        assert (view.state.current_status, view.state.poc_current_status) == (NodeStatus.POC, PocStatus.GENERATING)
        second.set_epoch_state(POC)
        second.start_poc()
        assert (await second.reconcile_now()).dispatched == []
        assert paths(sim, "n1", INIT_GENERATE) == 1
    finally:
        await second.stop()


# --- hardware sync ---------------------------------------------------------------------------------


async def test_hardware_sync_sends_a_diff_only_when_something_differs(
    broker: Broker, chain: FakeChain, sim: SimMLNodeServer
) -> None:
    await broker.register_many(
        [sim_node_config(sim, "n1", {MODEL_B: [], MODEL_A: []}), sim_node_config(sim, "n2", hardware=[("A100", 2)])]
    )
    await broker.poll_now()
    diff = await broker.sync_hardware_now()
    assert diff is not None and diff.creator == PARTICIPANT and list(diff.removed) == []
    n1, n2 = diff.newOrModified
    assert (n1.local_id, n1.status, list(n1.models)) == ("n1", int(NodeStatus.STOPPED), sorted([MODEL_A, MODEL_B]))
    assert (n1.host, n1.port) == (sim.host, str(sim.port))
    assert [(h.type, h.count) for h in n2.hardware] == [("A100", 2)]
    assert await broker.sync_hardware_now() is None  # the chain now agrees
    assert broker.metrics().hardware_diffs_sent == 1


async def test_a_new_address_or_a_node_unknown_locally_is_synced(
    broker: Broker, chain: FakeChain, sim: SimMLNodeServer
) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    await broker.poll_now()
    first = await broker.sync_hardware_now()
    assert first is not None
    # The chain has our node at an old address (fix 9: the reference compared neither host nor port),
    # plus a node we no longer run.
    stale = HardwareNodes()
    stale.CopyFrom(chain.hardware[PARTICIPANT])
    stale.hardware_nodes[0].host = "10.1.1.1"
    gone = stale.hardware_nodes.add()
    gone.CopyFrom(stale.hardware_nodes[0])
    gone.local_id = "retired"
    chain.hardware[PARTICIPANT] = stale
    diff = await broker.sync_hardware_now()
    assert diff is not None
    assert [(n.local_id, n.host) for n in diff.newOrModified] == [("n1", sim.host)]
    assert [n.local_id for n in diff.removed] == ["retired"]


async def test_without_a_signer_the_diff_is_not_sent(chain: FakeChain, sim: SimMLNodeServer, tmp_path: Path) -> None:
    broker = make_broker(chain, tmp_path, tx_sink=None)
    try:
        await broker.register(sim_node_config(sim, "n1"))
        assert await broker.sync_hardware_now() is not None
        assert broker.metrics().hardware_diffs_sent == 0
    finally:
        await broker.stop()


async def test_the_periodic_sync_survives_chain_errors(chain: FakeChain, sim: SimMLNodeServer, tmp_path: Path) -> None:
    sink = ListTxSink(chain=chain)
    chain.fail_next("hardware_nodes", ChainUnavailable("down"), ChainUnavailable("still down"))
    async with make_broker(chain, tmp_path, settings=FAST, tx_sink=sink) as broker:
        await broker.register(sim_node_config(sim, "n1"))
        await wait_for(lambda: any(isinstance(m, MsgSubmitHardwareDiff) for m in sink.msgs), what="a diff")
        await wait_for(lambda: chain.calls["hardware_nodes"] >= 4, what="more periodic syncs")
    assert chain.failures["hardware_nodes"] == []
