"""Inference locking (reference/broker.md §6, test inventory §7.2; fix 3) against simulated ML nodes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import pytest
from broker_fakes import (
    PARAMS,
    FakeChain,
    gov_model,
    ml_node,
    settle,
    sim_node_config,
    status_of,
)

from dapi.broker import Broker, EpochState, NodeStatus, NoNodeAvailable
from dapi.chain.epochs import Epoch
from dapi.config import NodeConfig
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.gen.inference.inference.epoch_group_data_pb2 import MLNodeInfo
from dapi.gen.inference.inference.model_pb2 import Model

MODEL1 = "model1"
MODEL2 = "model2"
INFERENCE_STATE = EpochState.at_height(Epoch(1, 40), PARAMS, 60)

Serve = Callable[..., Awaitable[list[str]]]


@pytest.fixture
def serve(broker: Broker, chain: FakeChain, sim: SimMLNodeServer) -> Serve:
    """registerNodeAndSetInferenceStatus: register, give epoch data, InferenceUpAll, converge."""

    async def run(*configs: NodeConfig, epoch: Mapping[str, Sequence[MLNodeInfo]] | None = None) -> list[str]:
        await broker.register_many(list(configs))
        chain.form_epoch(1, epoch if epoch is not None else {MODEL1: [ml_node(c.id) for c in configs]})
        chain.current_epoch = 1
        broker.set_epoch_state(INFERENCE_STATE)
        await broker.update_epoch_data()
        broker.inference_up_all()
        await settle(broker)
        for c in configs:
            assert status_of(broker, c.id) == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
        return [c.id for c in configs]

    return run


def cfg(
    sim: SimMLNodeServer, name: str, max_concurrent: int = 1, version: str = "", models: Sequence[str] = (MODEL1,)
) -> NodeConfig:
    return sim_node_config(sim, name, {m: [] for m in models}, max_concurrent=max_concurrent, version=version)


@pytest.fixture
def governance_models() -> list[Model]:
    return [gov_model(MODEL1), gov_model(MODEL2)]


async def test_single_node_takes_max_concurrent_locks(broker: Broker, sim: SimMLNodeServer, serve: Serve) -> None:
    await serve(cfg(sim, "node1"))
    assert broker.lock_node(MODEL1, accept_earlier_version=False).id == "node1"
    with pytest.raises(NoNodeAvailable, match=MODEL1):
        broker.lock_node(MODEL1, accept_earlier_version=False)


async def test_a_removed_node_is_not_locked(broker: Broker, sim: SimMLNodeServer, serve: Serve) -> None:
    await serve(cfg(sim, "node1", max_concurrent=5))
    assert broker.lock_node(MODEL1).id == "node1"
    assert await broker.remove("node1") is True
    with pytest.raises(NoNodeAvailable):
        broker.lock_node(MODEL1)


async def test_model_mismatch(broker: Broker, sim: SimMLNodeServer, serve: Serve) -> None:
    await serve(cfg(sim, "node1"))
    with pytest.raises(NoNodeAvailable, match=MODEL2):
        broker.lock_node(MODEL2)


async def test_high_concurrency(broker: Broker, sim: SimMLNodeServer, serve: Serve) -> None:
    await serve(cfg(sim, "node1", max_concurrent=100))
    for _ in range(100):
        assert broker.lock_node(MODEL1).id == "node1"
    with pytest.raises(NoNodeAvailable):
        broker.lock_node(MODEL1)


async def test_version_filtering_and_fallback(broker: Broker, sim: SimMLNodeServer, serve: Serve) -> None:
    await serve(cfg(sim, "v1node", 1000, "v1"), cfg(sim, "novNode", 1000, ""))
    assert broker.lock_node(MODEL1, "v1", accept_earlier_version=False).id == "v1node"
    assert broker.lock_node(MODEL1, "v1", accept_earlier_version=False).id == "v1node"
    with pytest.raises(NoNodeAvailable, match="v2"):
        broker.lock_node(MODEL1, "v2", accept_earlier_version=False)
    assert broker.lock_node(MODEL1, "v2", accept_earlier_version=True).id in ("v1node", "novNode")


async def test_multiple_nodes_share_the_load(broker: Broker, sim: SimMLNodeServer, serve: Serve) -> None:
    await serve(cfg(sim, "node1"), cfg(sim, "node2"))
    first = broker.lock_node(MODEL1)
    second = broker.lock_node(MODEL1)
    assert {first.id, second.id} == {"node1", "node2"}


async def test_least_busy_node_is_chosen_with_ties_in_registration_order(
    broker: Broker, sim: SimMLNodeServer, serve: Serve
) -> None:
    await serve(cfg(sim, "a", 10), cfg(sim, "b", 10), cfg(sim, "c", 10))
    assert [broker.lock_node(MODEL1).id for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    broker.release_node("b")
    assert broker.lock_node(MODEL1).id == "b"


async def test_release_node(broker: Broker, sim: SimMLNodeServer, serve: Serve) -> None:
    await serve(cfg(sim, "node1"))
    assert broker.lock_node(MODEL1).id == "node1"
    assert broker.release_node("node1", ok=True) is True
    assert broker.lock_node(MODEL1).id == "node1"
    assert broker.release_node("node1", ok=False) is True
    assert broker.release_node("node1") is True  # double release: the count stays at 0, not -1
    view = broker.node("node1")
    assert view is not None and view.state.lock_count == 0
    assert broker.release_node("ghost") is False


async def test_locked_node_comes_back_with_its_segments(broker: Broker, sim: SimMLNodeServer, serve: Serve) -> None:
    """TestRoundTripSegment: the locked node carries its own inference segment."""
    await serve(cfg(sim, "node1"))
    node = broker.lock_node(MODEL1)
    assert node.id == "node1"
    assert node.config.inference_segment == sim.segment("node1") == node.config.poc_segment


async def test_locked_node_context_releases_even_on_error(broker: Broker, sim: SimMLNodeServer, serve: Serve) -> None:
    await serve(cfg(sim, "node1"))
    with pytest.raises(RuntimeError):
        async with broker.locked_node(MODEL1) as node:
            assert node.id == "node1"
            raise RuntimeError("inference failed")
    async with broker.locked_node(MODEL1) as node:
        assert node.id == "node1"


async def test_routing_uses_the_model_the_node_serves_this_epoch(
    broker: Broker, sim: SimMLNodeServer, serve: Serve
) -> None:
    """Fix 3: the node is configured for both models, but the epoch put it on model2."""
    await serve(cfg(sim, "node1", 5, models=(MODEL1, MODEL2)), epoch={MODEL2: [ml_node("node1")]})
    assert sim.node("node1").model == MODEL2
    with pytest.raises(NoNodeAvailable):
        broker.lock_node(MODEL1)
    assert broker.lock_node(MODEL2).id == "node1"


async def test_no_locks_without_a_synced_epoch_state(broker: Broker, sim: SimMLNodeServer, serve: Serve) -> None:
    await serve(cfg(sim, "node1"))
    broker.set_epoch_state(EpochState.at_height(Epoch(1, 40), PARAMS, 60, synced=False))
    with pytest.raises(NoNodeAvailable):
        broker.lock_node(MODEL1)


async def test_a_disabled_node_stops_taking_requests_once_the_disable_applies(
    broker: Broker, sim: SimMLNodeServer, serve: Serve
) -> None:
    await serve(cfg(sim, "node1", 5))
    broker.set_admin_state("node1", False)  # at epoch 1: still serving for the rest of epoch 1
    assert broker.lock_node(MODEL1).id == "node1"
    broker.set_epoch_state(EpochState.at_height(Epoch(2, 80), PARAMS, 81))
    with pytest.raises(NoNodeAvailable):
        broker.lock_node(MODEL1)


async def test_a_node_with_a_job_in_flight_is_not_locked(
    broker: Broker, chain: FakeChain, sim: SimMLNodeServer, serve: Serve
) -> None:
    await serve(cfg(sim, "node1", 5, models=(MODEL1, MODEL2)))
    assert broker.lock_node(MODEL1).id == "node1"
    # A new epoch moves the node to model2: both statuses stay INFERENCE while the reload runs.
    chain.form_epoch(2, {MODEL2: [ml_node("node1")]})
    broker.set_epoch_state(EpochState.at_height(Epoch(2, 80), PARAMS, 92))
    sim.set_fault("node1", timeout=True, path_prefix="/api/v1/state")  # the reload hangs on its first call
    await broker.update_epoch_data()
    assert (await broker.reconcile_now()).dispatched == ["node1"]
    assert status_of(broker, "node1") == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
    with pytest.raises(NoNodeAvailable):
        broker.lock_node(MODEL1)
