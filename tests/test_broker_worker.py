"""Node worker and node jobs (reference/broker.md §4, test inventory §7.3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from broker_fakes import INFERENCE_UP, INIT_GENERATE, INIT_VALIDATE, STOP, paths, wait_for

from dapi.broker.jobs import InferenceUpJob, InitValidateJob, NodeJob, NodeResult, StartPocJob, StopJob
from dapi.broker.rules import choose_inference_model
from dapi.broker.state import NodeStatus, PocStatus
from dapi.broker.worker import DEFAULT_CAPACITY, NodeWorker
from dapi.config import ModelArgs
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.gen.inference.inference.epoch_group_data_pb2 import MLNodeInfo
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.mlnodeclient import InitDto, MLNodeClient, build_init_dto

Results = list[tuple[str, NodeJob, NodeResult]]


class FuncJob(NodeJob):
    """The reference's TestCommand: a job whose body the test supplies (default: success → STOPPED)."""

    target = NodeStatus.STOPPED

    def __init__(self, job_id: int, body: Callable[[], Awaitable[NodeResult]] | None = None) -> None:
        super().__init__(job_id)
        self.body = body

    async def run(self, client: MLNodeClient) -> NodeResult:
        if self.body is None:
            return NodeResult.ok(NodeStatus.STOPPED)
        return await self.body()


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"batch_interval": 0.05, "nodes": ("test-node-1",)}


@pytest.fixture
async def results() -> Results:
    return []


@pytest.fixture
async def worker(results: Results) -> AsyncIterator[NodeWorker]:
    # Jobs of these tests never call the client; an unroutable address proves it.
    client = MLNodeClient("http://127.0.0.1:9", "http://127.0.0.1:9")
    w = NodeWorker(
        "test-node-1", client, lambda node_id, job, res: results.append((node_id, job, res)), job_timeout=5.0
    )
    w.start()
    yield w
    await w.shutdown(graceful=False)
    await client.aclose()


async def test_worker_reports_a_successful_job(worker: NodeWorker, results: Results) -> None:
    assert worker.submit(FuncJob(1)) is True
    await wait_for(lambda: len(results) == 1)
    node_id, job, result = results[0]
    assert (node_id, job.job_id, result.succeeded, result.final_status) == ("test-node-1", 1, True, NodeStatus.STOPPED)


async def test_worker_reports_a_failed_job(worker: NodeWorker, results: Results) -> None:
    async def fail() -> NodeResult:
        return NodeResult.failed("test error")

    assert worker.submit(FuncJob(1, fail)) is True
    await wait_for(lambda: len(results) == 1)
    assert (results[0][2].succeeded, results[0][2].error) == (False, "test error")


async def test_queue_full_counts_the_running_job(worker: NodeWorker, results: Results) -> None:
    release = asyncio.Event()

    async def blocked() -> NodeResult:
        await release.wait()
        return NodeResult.ok(NodeStatus.STOPPED)

    assert all(worker.submit(FuncJob(i, blocked)) for i in range(DEFAULT_CAPACITY))
    assert worker.submit(FuncJob(99, blocked)) is False
    # Once the worker has picked up the first job the answer is the same: running + 9 queued = 10.
    await wait_for(lambda: worker.running_job is not None)
    assert worker.submit(FuncJob(100, blocked)) is False
    release.set()
    await wait_for(lambda: len(results) == DEFAULT_CAPACITY)
    assert worker.submit(FuncJob(101)) is True
    assert [job.job_id for _, job, _ in results] == list(range(DEFAULT_CAPACITY))


async def test_graceful_shutdown_runs_every_queued_job(results: Results) -> None:
    executed: list[int] = []
    client = MLNodeClient("http://127.0.0.1:9", "http://127.0.0.1:9")
    w = NodeWorker("n", client, lambda node_id, job, res: results.append((node_id, job, res)), job_timeout=5.0)
    w.start()

    def job(i: int) -> FuncJob:
        async def body() -> NodeResult:
            await asyncio.sleep(0.01)
            executed.append(i)
            return NodeResult.ok(NodeStatus.STOPPED)

        return FuncJob(i, body)

    for i in range(5):
        assert w.submit(job(i))
    await w.shutdown(graceful=True)
    assert executed == [0, 1, 2, 3, 4]
    assert len(results) == 5
    assert w.submit(job(5)) is False  # a closed worker takes nothing (the reference would crash)
    await client.aclose()


async def test_a_running_job_can_be_cancelled(worker: NodeWorker, results: Results) -> None:
    started = asyncio.Event()

    async def until_cancelled() -> NodeResult:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    assert worker.submit(FuncJob(7, until_cancelled))
    await started.wait()
    assert worker.cancel(7) is True
    await wait_for(lambda: len(results) == 1)
    result = results[0][2]
    assert (result.succeeded, result.final_status, result.error) == (False, None, "cancelled")
    # The worker carries on after a cancellation.
    assert worker.submit(FuncJob(8))
    await wait_for(lambda: len(results) == 2)
    assert results[1][2].succeeded


async def test_a_queued_job_can_be_cancelled_before_it_runs(worker: NodeWorker, results: Results) -> None:
    release = asyncio.Event()
    ran: list[int] = []

    async def blocked() -> NodeResult:
        await release.wait()
        return NodeResult.ok(NodeStatus.STOPPED)

    async def record() -> NodeResult:
        ran.append(2)
        return NodeResult.ok(NodeStatus.STOPPED)

    worker.submit(FuncJob(1, blocked))
    worker.submit(FuncJob(2, record))
    assert worker.cancel(2) is True
    assert worker.cancel(12345) is False
    release.set()
    await wait_for(lambda: len(results) == 2)
    assert ran == []
    assert results[1][2].final_status is None


async def test_a_job_past_its_deadline_fails(results: Results) -> None:
    client = MLNodeClient("http://127.0.0.1:9", "http://127.0.0.1:9")
    w = NodeWorker("n", client, lambda node_id, job, res: results.append((node_id, job, res)), job_timeout=0.05)
    w.start()

    async def forever() -> NodeResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    w.submit(FuncJob(1, forever))
    await wait_for(lambda: len(results) == 1)
    result = results[0][2]
    assert (result.succeeded, result.final_status) == (False, NodeStatus.FAILED)
    assert "timed out" in result.error
    await w.shutdown(graceful=False)
    await client.aclose()


async def test_a_crashing_job_is_reported_and_the_worker_survives(worker: NodeWorker, results: Results) -> None:
    async def crash() -> NodeResult:
        raise RuntimeError("bug in a job")

    worker.submit(FuncJob(1, crash))
    worker.submit(FuncJob(2))
    await wait_for(lambda: len(results) == 2)
    assert results[0][2].final_status is NodeStatus.FAILED and "bug in a job" in results[0][2].error
    assert results[1][2].succeeded


async def test_a_failing_result_callback_does_not_kill_the_worker() -> None:
    seen: list[int] = []

    def callback(node_id: str, job: NodeJob, result: NodeResult) -> None:
        seen.append(job.job_id)
        if job.job_id == 1:
            raise RuntimeError("broken callback")

    client = MLNodeClient("http://127.0.0.1:9", "http://127.0.0.1:9")
    w = NodeWorker("n", client, callback, job_timeout=5.0)
    w.start()
    w.submit(FuncJob(1))
    w.submit(FuncJob(2))
    await wait_for(lambda: seen == [1, 2])
    await w.shutdown()
    await client.aclose()


# --- jobs against a simulated ML node ---------------------------------------------------------------


@pytest.fixture
async def client(sim: SimMLNodeServer) -> AsyncIterator[MLNodeClient]:
    url = sim.node_url("test-node-1")
    async with MLNodeClient(url, url) as c:
        yield c


def _dto(node_num: int = 1, node_count: int = 2) -> InitDto:
    return build_init_dto(
        block_height=100,
        block_hash="ABCDEF",
        public_key="02AB",
        node_num=node_num,
        node_count=node_count,
        callback_url="http://127.0.0.1:1",
    )


async def test_ml_client_interaction_stop_then_inference_up(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    """TestNodeWorker_MLClientInteraction: Stop, then InferenceUp with the epoch model and merged args."""
    result = await StopJob(1).run(client)
    assert (result.succeeded, result.final_status) == (True, NodeStatus.STOPPED)
    assert paths(sim, "test-node-1", STOP) == 1

    choice = choose_inference_model(
        {"test-model": ModelArgs(args=["--arg1", "--arg2"])},
        {"test-model": Model(id="test-model", model_args=["--arg1", "--arg2"])},
        {"test-model": MLNodeInfo(node_id="test-node-1")},
    )
    result = await InferenceUpJob(2, choice).run(client)
    assert (result.succeeded, result.final_status, result.served_model) == (True, NodeStatus.INFERENCE, "test-model")
    assert paths(sim, "test-node-1", STOP) == 2  # InferenceUp stops first: the node was not serving
    assert paths(sim, "test-node-1", INFERENCE_UP) == 1
    node = sim.node("test-node-1")
    assert (node.model, node.args) == ("test-model", ["--arg1", "--arg2"])


async def test_inference_up_is_idempotent_on_a_healthy_node(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    choice = choose_inference_model({"m": ModelArgs()}, {}, {})
    assert (await InferenceUpJob(1, choice).run(client)).succeeded
    calls = len(sim.calls("test-node-1"))
    result = await InferenceUpJob(2, choice, known_served_model="m").run(client)
    assert result.succeeded and result.final_status is NodeStatus.INFERENCE
    new_paths = [c.path for c in sim.calls("test-node-1")[calls:]]
    assert new_paths == ["/api/v1/state", "/health"]  # looked, did nothing


async def test_inference_up_reloads_a_node_known_to_serve_another_model(
    sim: SimMLNodeServer, client: MLNodeClient
) -> None:
    await InferenceUpJob(1, choose_inference_model({"old": ModelArgs()}, {}, {})).run(client)
    result = await InferenceUpJob(
        2, choose_inference_model({"new": ModelArgs()}, {}, {}), known_served_model="old"
    ).run(client)
    assert result.served_model == "new" and sim.node("test-node-1").model == "new"


async def test_inference_up_without_a_model_fails_after_stopping(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    result = await InferenceUpJob(1, None).run(client)
    assert (result.succeeded, result.final_status) == (False, NodeStatus.FAILED)
    assert "no model to serve" in result.error
    assert paths(sim, "test-node-1", STOP) == 1 and paths(sim, "test-node-1", INFERENCE_UP) == 0


async def test_inference_up_reports_the_nodes_failure(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    sim.node("test-node-1").inference_up_error = "CUDA out of memory"
    result = await InferenceUpJob(1, choose_inference_model({"m": ModelArgs()}, {}, {})).run(client)
    assert (result.succeeded, result.final_status, result.final_poc_status) == (
        False,
        NodeStatus.FAILED,
        PocStatus.IDLE,
    )
    assert "CUDA out of memory" in result.error


async def test_start_poc_skips_stop_on_a_stopped_node_and_is_idempotent(
    sim: SimMLNodeServer, client: MLNodeClient
) -> None:
    result = await StartPocJob(1, _dto()).run(client)
    assert (result.final_status, result.final_poc_status) == (NodeStatus.POC, PocStatus.GENERATING)
    assert paths(sim, "test-node-1", STOP) == 0 and paths(sim, "test-node-1", INIT_GENERATE) == 1
    again = await StartPocJob(2, _dto()).run(client)
    assert again.succeeded
    assert paths(sim, "test-node-1", INIT_GENERATE) == 1  # already generating: nothing sent


async def test_start_poc_stops_a_serving_node_first(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    await InferenceUpJob(1, choose_inference_model({"m": ModelArgs()}, {}, {})).run(client)
    result = await StartPocJob(2, _dto()).run(client)
    assert result.succeeded and paths(sim, "test-node-1", STOP) == 2
    init = sim.node("test-node-1").pow_init
    assert init is not None and (init.node_id, init.node_count) == (1, 2)


async def test_init_validate_switches_a_generating_node_without_stop(
    sim: SimMLNodeServer, client: MLNodeClient
) -> None:
    await StartPocJob(1, _dto()).run(client)
    result = await InitValidateJob(2, _dto()).run(client)
    assert (result.final_status, result.final_poc_status) == (NodeStatus.POC, PocStatus.VALIDATING)
    assert paths(sim, "test-node-1", STOP) == 0 and paths(sim, "test-node-1", INIT_VALIDATE) == 1
    assert (await InitValidateJob(3, _dto()).run(client)).succeeded
    assert paths(sim, "test-node-1", INIT_VALIDATE) == 1


async def test_an_unreachable_node_fails_the_job(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    sim.set_fault("test-node-1", refuse=True)
    result = await StopJob(1).run(client)
    assert (result.succeeded, result.final_status) == (False, NodeStatus.FAILED)
    assert result.error
