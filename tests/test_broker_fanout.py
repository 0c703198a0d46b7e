"""StartPoC to a node last seen STOPPED is one request; a node that is not stopped after all still gets there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from broker_fakes import MODEL_A, PARAMS, FakeChain, gov_model, make_broker, sim_node_config, wait_for

from dapi.broker import Broker, EpochState, NodeStatus
from dapi.chain.epochs import Epoch
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.mlnodeclient import MLNodeClient

POC = 40


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Broker, SimMLNodeServer]]:
    async with SimMLNodeServer(batch_interval=3600) as sim:
        broker = make_broker(FakeChain([gov_model(MODEL_A)]), tmp_path)
        await broker.start()
        try:
            yield broker, sim
        finally:
            await broker.stop()


async def start_poc(broker: Broker) -> None:
    broker.set_epoch_state(EpochState.at_height(Epoch(1, POC), PARAMS, POC))
    assert broker.start_poc().accepted


async def test_a_node_seen_stopped_gets_init_generate_alone(setup: tuple[Broker, SimMLNodeServer]) -> None:
    broker, sim = setup
    await broker.register(sim_node_config(sim, "n1"))
    await broker.poll_now(force=True)
    assert broker.node("n1").state.current_status is NodeStatus.STOPPED  # type: ignore[union-attr]
    sim.clear_calls("n1")
    await start_poc(broker)
    await wait_for(lambda: broker.node("n1").state.current_status is NodeStatus.POC, what="PoC")  # type: ignore[union-attr]
    assert [c.path for c in sim.calls("n1")] == ["/api/v1/pow/init/generate"]


async def test_a_node_not_stopped_after_all_is_stopped_then_started(setup: tuple[Broker, SimMLNodeServer]) -> None:
    broker, sim = setup
    config = sim_node_config(sim, "n1")
    await broker.register(config)
    await broker.poll_now(force=True)
    # Behind the broker's back the ML node starts serving: the broker still believes it is STOPPED.
    async with MLNodeClient(config.poc_url, config.inference_url) as client:
        await client.inference_up(MODEL_A, [])
    sim.clear_calls("n1")
    await start_poc(broker)
    await wait_for(lambda: broker.node("n1").state.current_status is NodeStatus.POC, what="PoC")  # type: ignore[union-attr]
    paths = [c.path for c in sim.calls("n1")]
    assert paths[0] == "/api/v1/pow/init/generate"  # refused with 409: the node serves inference
    assert "/api/v1/stop" in paths and paths[-1] == "/api/v1/pow/init/generate"
    assert sim.node("n1").state.value == "POW"
