"""Phase commands (reference/broker.md §2.11-§2.13, test inventory §7.4; fix 1) and the reconciler
(§5.2-§5.5: stale results, cancellation of outdated jobs, the PoC block hash, InitDto; fix 7 backoff and
job timeout)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from broker_fakes import (
    CALLBACK_URL,
    FAST,
    INFERENCE_UP,
    INIT_GENERATE,
    MODEL_A,
    PARAMS,
    PUBKEY_HEX,
    FakeChain,
    block_hash,
    make_broker,
    paths,
    settle,
    sim_node_config,
    status_of,
    wait_for,
)

from dapi.broker import Broker, EpochState, NodeStatus, PocStatus
from dapi.chain.epochs import Epoch, EpochContext, Phase
from dapi.config import BrokerConfig
from dapi.devnet.mlnode import SimMLNodeServer

E1 = Epoch(1, 40)
CTX1 = EpochContext.for_epoch(E1, PARAMS)
# One height per phase of epoch 1 (the real boundaries; the reference's fixture table is wrong, §8.21).
HEIGHT_OF = {
    Phase.POC_GENERATE: CTX1.start_of_poc + 1,
    Phase.POC_GENERATE_WIND_DOWN: CTX1.end_of_poc_generation,
    Phase.POC_VALIDATE: CTX1.start_of_poc_validation,
    Phase.POC_VALIDATE_WIND_DOWN: CTX1.poc_validation_wind_down,
    Phase.INFERENCE: CTX1.end_of_poc_validation + 1,
}


def at_phase(phase: Phase, *, synced: bool = True) -> EpochState:
    state = EpochState.at_height(E1, PARAMS, HEIGHT_OF[phase], synced=synced)
    assert state.phase is phase
    return state


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- state commands (§7.4) -------------------------------------------------------------------------


async def test_start_poc_puts_fresh_nodes_into_poc(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register_many([sim_node_config(sim, "node-1"), sim_node_config(sim, "node-2")])
    broker.set_epoch_state(at_phase(Phase.POC_GENERATE))
    result = broker.start_poc()
    assert result.accepted and result.changed == ("node-1", "node-2")
    for view in broker.nodes():
        assert (view.state.intended_status, view.state.poc_intended_status) == (NodeStatus.POC, PocStatus.GENERATING)


async def test_start_poc_on_a_disabled_node_stops_it(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register_many([sim_node_config(sim, "node-1"), sim_node_config(sim, "node-2")])
    broker.set_admin_state("node-1", False)  # recorded at epoch 0
    broker.set_epoch_state(at_phase(Phase.POC_GENERATE))
    assert broker.epoch_state is not None and broker.epoch_state.latest_epoch_index == 1
    assert broker.start_poc().accepted
    n1, n2 = broker.nodes()
    assert n1.state.intended_status is NodeStatus.STOPPED and n1.state.poc_intended_status is PocStatus.IDLE
    assert (n2.state.intended_status, n2.state.poc_intended_status) == (NodeStatus.POC, PocStatus.GENERATING)


@pytest.mark.parametrize(
    ("command", "accepted_phases"),
    [
        ("start_poc", {Phase.POC_GENERATE}),
        ("init_validate", {Phase.POC_VALIDATE, Phase.POC_GENERATE_WIND_DOWN}),
        ("inference_up_all", {Phase.INFERENCE, Phase.POC_VALIDATE_WIND_DOWN}),
    ],
)
async def test_every_phase_command_answers_on_every_path(
    broker: Broker, sim: SimMLNodeServer, command: str, accepted_phases: set[Phase]
) -> None:
    """Fix 1: the reference sent no response when unsynced, in a wrong phase, or with nothing to change."""
    await broker.register(sim_node_config(sim, "n1"))
    run = getattr(broker, command)
    no_state = run()
    assert not no_state.accepted and "not synced" in no_state.reason
    broker.set_epoch_state(at_phase(Phase.INFERENCE, synced=False))
    assert not run().accepted
    for phase in Phase:
        broker.set_epoch_state(at_phase(phase))
        first = run()
        assert first.accepted is (phase in accepted_phases), phase
        if first.accepted:
            again = run()
            assert again.accepted and again.changed == () and again.reason == "nothing to change"
        else:
            assert first.changed == () and str(phase) in first.reason


async def test_init_validate_and_inference_up_all_targets(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    broker.set_epoch_state(at_phase(Phase.POC_GENERATE_WIND_DOWN))
    broker.init_validate()
    assert status_of(broker, "n1")[0] is NodeStatus.POC
    view = broker.node("n1")
    assert view is not None and view.state.poc_intended_status is PocStatus.VALIDATING
    broker.set_epoch_state(at_phase(Phase.POC_VALIDATE_WIND_DOWN))
    broker.inference_up_all()
    view = broker.node("n1")
    assert view is not None
    assert (view.state.intended_status, view.state.poc_intended_status) == (NodeStatus.INFERENCE, PocStatus.IDLE)


# --- the reconciler --------------------------------------------------------------------------------


async def test_convergence_from_registration_to_inference(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register(sim_node_config(sim, "n1", {MODEL_A: ["--tp", "2"]}))
    await broker.poll_now()
    assert status_of(broker, "n1") == (NodeStatus.UNKNOWN, NodeStatus.STOPPED)
    broker.set_epoch_state(at_phase(Phase.INFERENCE))
    broker.inference_up_all()
    await settle(broker)
    assert status_of(broker, "n1") == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
    assert (sim.node("n1").model, sim.node("n1").args) == (MODEL_A, ["--tp", "2"])
    report = await broker.reconcile_now()
    assert report.dispatched == []  # converged: nothing more to do


async def test_reconcile_does_nothing_without_a_synced_epoch_state(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    report = await broker.reconcile_now()
    assert report.skipped and report.dispatched == []
    broker.set_epoch_state(at_phase(Phase.INFERENCE, synced=False))
    assert (await broker.reconcile_now()).skipped


async def test_an_outdated_job_is_cancelled_and_its_result_ignored(broker: Broker, sim: SimMLNodeServer) -> None:
    await broker.register(sim_node_config(sim, "n1"))
    sim.set_fault("n1", timeout=True, path_prefix=INFERENCE_UP, count=1)  # the model "loads" forever
    broker.set_epoch_state(at_phase(Phase.INFERENCE))
    broker.inference_up_all()
    await broker.reconcile_now()
    await wait_for(lambda: paths(sim, "n1", INFERENCE_UP) == 1, what="inference/up in flight")
    view = broker.node("n1")
    assert view is not None and view.state.reconcile_info is not None

    # The next PoC starts while the model still loads: the InferenceUp job is outdated.
    broker.set_epoch_state(EpochState.at_height(Epoch(2, 80), PARAMS, 81))
    broker.start_poc()
    report = await broker.reconcile_now()
    assert report.cancelled == ["n1"] and report.dispatched == ["n1"]
    await settle(broker)
    assert status_of(broker, "n1") == (NodeStatus.POC, NodeStatus.POC)
    view = broker.node("n1")
    assert view is not None and view.state.poc_current_status is PocStatus.GENERATING
    init = sim.node("n1").pow_init
    assert init is not None and init.block_height == 80
    assert broker.metrics().stale_results == 1  # the cancelled InferenceUp's result
    assert broker.metrics().jobs_cancelled == 1


async def test_the_poc_block_hash_is_fetched_once_and_init_dto_is_as_specified(
    broker: Broker, chain: FakeChain, sim: SimMLNodeServer
) -> None:
    await broker.register_many([sim_node_config(sim, n) for n in ("n1", "n2", "n3")])
    assert await broker.remove("n2")  # a gap: numbers 1 and 3 remain
    broker.set_epoch_state(at_phase(Phase.POC_GENERATE))
    broker.start_poc()
    report = await broker.reconcile_now()
    assert sorted(report.dispatched) == ["n1", "n3"]
    assert chain.calls["block_hash"] == 1
    await settle(broker)
    secrets = set()
    for name, num in (("n1", 1), ("n3", 3)):
        (call,) = [c for c in sim.calls(name) if c.path == INIT_GENERATE]
        dto = call.json
        assert dto["node_id"] == num
        assert dto["node_count"] == 4  # highest NodeNum among registered nodes + 1
        assert dto["block_height"] == E1.poc_start_block_height
        assert dto["block_hash"] == block_hash(E1.poc_start_block_height) and dto["block_hash"].isupper()
        assert dto["public_key"] == PUBKEY_HEX.lower()
        # The node's own callback URL (DESIGN.md §4.5): a random secret per node, naming that node.
        url = re.fullmatch(re.escape(CALLBACK_URL) + r"/n/([A-Za-z0-9_-]{32})/v1/poc-batches", dto["url"])
        assert url is not None, dto["url"]
        assert broker.callback_owner(url[1]) == name
        secrets.add(url[1])
        assert (dto["batch_size"], dto["r_target"], dto["fraud_threshold"]) == (100, 1.4013564660458173, 1e-7)
        assert dto["params"]["dim"] == 1792 and dto["params"]["seq_len"] == 256
    assert len(secrets) == 2
    assert broker.poc_stage_hash(E1.poc_start_block_height) == block_hash(E1.poc_start_block_height)
    broker.init_validate()  # wrong phase: nothing
    await broker.reconcile_now()
    assert chain.calls["block_hash"] == 1


async def test_failing_nodes_back_off_exponentially_up_to_the_cap(
    chain: FakeChain, sim: SimMLNodeServer, tmp_path: Path
) -> None:
    clock = FakeClock()
    settings = BrokerConfig(status_poll_interval=60, hardware_sync_interval=60, job_timeout=5, retry_backoff_max=8.0)
    broker = make_broker(chain, tmp_path, settings=settings, clock=clock, retry_backoff_base=1.0)
    try:
        await broker.register(sim_node_config(sim, "n1"))
        sim.set_fault("n1", status=500, path_prefix=INIT_GENERATE)
        broker.set_epoch_state(at_phase(Phase.POC_GENERATE))
        broker.start_poc()
        assert (await broker.reconcile_now()).dispatched == ["n1"]
        await settle(broker)
        delays = []
        for attempt in range(2, 7):
            assert paths(sim, "n1", INIT_GENERATE) == attempt - 1
            view = broker.node("n1")
            assert view is not None and view.state.current_status is NodeStatus.FAILED
            assert "500" in view.state.failure_reason
            # Not retried while the backoff runs, however often a pass is triggered.
            waited = 0.0
            while not (report := await broker.reconcile_now()).dispatched:
                assert report.deferred == ["n1"]
                clock.now += 0.5
                waited += 0.5
            delays.append(waited)
            await settle(broker)
            assert paths(sim, "n1", INIT_GENERATE) == attempt
        assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
        # Cleared fault: the next attempt succeeds and the backoff is forgotten.
        sim.clear_fault("n1")
        clock.now += 100
        await settle(broker)
        assert status_of(broker, "n1") == (NodeStatus.POC, NodeStatus.POC)
        view = broker.node("n1")
        assert view is not None and view.state.failure_reason == ""
    finally:
        await broker.stop()


async def test_a_job_past_its_deadline_marks_the_node_failed(
    chain: FakeChain, sim: SimMLNodeServer, tmp_path: Path
) -> None:
    settings = BrokerConfig(status_poll_interval=60, hardware_sync_interval=60, job_timeout=0.2, retry_backoff_max=60)
    broker = make_broker(chain, tmp_path, settings=settings, retry_backoff_base=60)
    try:
        await broker.register(sim_node_config(sim, "n1"))
        sim.set_fault("n1", timeout=True, path_prefix=INIT_GENERATE)
        broker.set_epoch_state(at_phase(Phase.POC_GENERATE))
        broker.start_poc()
        await settle(broker)
        view = broker.node("n1")
        assert view is not None and view.state.current_status is NodeStatus.FAILED
        assert "timed out" in view.state.failure_reason
        assert view.state.reconcile_info is None  # the node is free for the next attempt
    finally:
        await broker.stop()


async def test_started_broker_reacts_to_commands_without_manual_passes(
    chain: FakeChain, sim: SimMLNodeServer, tmp_path: Path
) -> None:
    broker = make_broker(chain, tmp_path, settings=FAST, reconcile_interval=30.0)
    async with broker:
        await broker.register(sim_node_config(sim, "n1"))
        broker.set_epoch_state(at_phase(Phase.INFERENCE))
        broker.inference_up_all()  # the trigger, not the 30 s timer, runs the pass
        await wait_for(lambda: status_of(broker, "n1")[1] is NodeStatus.INFERENCE, what="node to serve")


async def test_a_cancelled_jobs_result_is_rejected_even_after_the_intent_flips_back(
    broker: Broker, sim: SimMLNodeServer
) -> None:
    """A→B→A: the reference matched results by target, so the cancelled first A job's result would be
    taken for the second A job's; results are matched by job id here."""
    await broker.register(sim_node_config(sim, "n1"))
    sim.set_fault("n1", timeout=True, path_prefix=INFERENCE_UP, count=1)
    serving = EpochState.at_height(Epoch(2, 80), PARAMS, 92, block_hash=block_hash(92))
    mining = EpochState.at_height(Epoch(2, 80), PARAMS, 80, block_hash=block_hash(80))
    broker.set_epoch_state(serving)
    broker.inference_up_all()
    await broker.reconcile_now()  # A: InferenceUp, held by the node
    await wait_for(lambda: paths(sim, "n1", INFERENCE_UP) == 1)
    broker.set_epoch_state(mining)
    broker.start_poc()
    await broker.reconcile_now()  # cancels A, queues B (StartPoC); no await inside: A has not reported yet
    broker.set_epoch_state(serving)
    broker.inference_up_all()
    report = await broker.reconcile_now()  # cancels B, queues A' (InferenceUp again)
    assert report.cancelled == ["n1"] and report.dispatched == ["n1"]
    await settle(broker)
    assert broker.metrics().stale_results == 2  # A's and B's
    assert status_of(broker, "n1") == (NodeStatus.INFERENCE, NodeStatus.INFERENCE)
    assert paths(sim, "n1", INIT_GENERATE) == 0
