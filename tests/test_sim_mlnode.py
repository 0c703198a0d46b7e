"""The simulated ML node server: state rules, batch callbacks to a real receiver, faults, inspection."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dapi.devnet.mlnode import (
    DIST_SCALE,
    SimMLNodeServer,
    probability_honest,
    sim_dist,
    start_sim_mlnodes,
)
from dapi.mlnodeclient import DEFAULT_R_TARGET, MAINNET_PARAMS
from dapi.runtime.serving import EmbeddedServer

INTERVAL = 0.05
PUBKEY = "02" + "ab" * 32
BLOCK_HASH = "C0FFEE" * 10 + "ABCD"


class Receiver:
    """A stand-in for the daemon's ML callback server: records every batch POSTed to it."""

    def __init__(self) -> None:
        self.generated: list[dict[str, Any]] = []
        self.validated: list[dict[str, Any]] = []
        self.fail_next = 0  # answer this many POSTs with 500 before accepting again
        self.url = ""

    def app(self) -> Starlette:
        async def collect(request: Request) -> Response:
            if self.fail_next > 0:
                self.fail_next -= 1
                return JSONResponse({"error": "try later"}, status_code=500)
            kind = request.path_params["kind"]
            (self.generated if kind == "generated" else self.validated).append(await request.json())
            return Response(status_code=200)

        return Starlette(routes=[Route("/v1/poc-batches/{kind}", collect, methods=["POST"])])


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"batch_interval": INTERVAL, "nonces_per_batch": 16, "nodes": ("n1",)}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    server = EmbeddedServer(rec.app())
    await server.start()
    rec.url = server.url
    yield rec
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def init_body(
    callback: str, *, node_id: int = 1, node_count: int = 3, public_key: str = PUBKEY, **extra: Any
) -> dict[str, Any]:
    body = {
        "block_hash": BLOCK_HASH,
        "block_height": 240,
        "public_key": public_key,
        "batch_size": 100,
        "r_target": DEFAULT_R_TARGET,
        "fraud_threshold": 1e-7,
        "params": MAINNET_PARAMS.model_dump(),
        "node_id": node_id,
        "node_count": node_count,
        "url": callback + "/v1/poc-batches",
    }
    body.update(extra)
    return body


async def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Node:
    """Terse HTTP access to one simulated node."""

    def __init__(self, http: httpx.AsyncClient, base: str) -> None:
        self.http, self.base = http, base

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(self.base + path)

    async def post(self, path: str, body: Any = None) -> httpx.Response:
        return await self.http.post(self.base + path, json=body)

    async def state(self) -> str:
        resp = await self.get("/api/v1/state")
        assert resp.status_code == 200
        return resp.json()["state"]


@pytest.fixture
def n1(sim: SimMLNodeServer, http: httpx.AsyncClient) -> Node:
    return Node(http, sim.node_url("n1"))


# --- state rules -------------------------------------------------------------------------------------


async def test_fresh_node_is_stopped_and_pow_not_loaded(n1: Node) -> None:
    assert await n1.state() == "STOPPED"
    resp = await n1.get("/api/v1/pow/status")
    assert (resp.status_code, resp.json()) == (200, {"status": "NOT_LOADED"})
    assert (await n1.get("/health")).status_code == 503


async def test_generate_then_validate_in_place_then_stop(n1: Node, receiver: Receiver) -> None:
    resp = await n1.post("/api/v1/pow/init/generate", init_body(receiver.url))
    assert resp.status_code == 200 and resp.json()["status"] == "OK"
    assert await n1.state() == "POW"
    assert (await n1.get("/api/v1/pow/status")).json() == {"status": "GENERATING", "is_model_initialized": True}

    assert (await n1.post("/api/v1/pow/init/validate", init_body(receiver.url))).status_code == 200
    assert (await n1.get("/api/v1/pow/status")).json()["status"] == "VALIDATING"

    assert (await n1.post("/api/v1/stop")).json() == {"status": "OK"}
    assert await n1.state() == "STOPPED"
    assert (await n1.get("/api/v1/pow/status")).json() == {"status": "NOT_LOADED"}


async def test_other_services_get_409_while_one_runs(n1: Node, receiver: Receiver) -> None:
    await n1.post("/api/v1/pow/init/generate", init_body(receiver.url))
    resp = await n1.post("/api/v1/inference/up", {"model": "m", "dtype": "float16", "additional_args": []})
    assert resp.status_code == 409
    assert resp.json()["detail"] == (
        "Cannot run INFERENCE because MLNode is currently in POW mode. Please stop POW first."
    )
    assert (await n1.post("/api/v1/train/start", {"a": 1})).status_code == 409
    assert await n1.state() == "POW"  # the state route itself is never guarded

    await n1.post("/api/v1/stop")
    assert (await n1.post("/api/v1/inference/up", {"model": "m", "dtype": "float16"})).status_code == 200
    for path, body in (
        ("/api/v1/pow/init/generate", init_body(receiver.url)),
        ("/api/v1/pow/init/validate", init_body(receiver.url)),
        ("/api/v1/pow/validate", {}),
    ):
        assert (await n1.post(path, body)).status_code == 409, path
    assert (await n1.get("/api/v1/pow/status")).status_code == 409
    assert await n1.state() == "INFERENCE"


async def test_init_generate_without_node_id_is_400_and_changes_nothing(n1: Node, receiver: Receiver) -> None:
    body = init_body(receiver.url)
    del body["node_id"]
    resp = await n1.post("/api/v1/pow/init/generate", body)
    assert resp.status_code == 400
    assert await n1.state() == "STOPPED"


async def test_json_without_content_type_is_accepted_like_the_go_client_sends_it(
    n1: Node, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    resp = await http.post(n1.base + "/api/v1/pow/init/generate", content=json.dumps(init_body(receiver.url)).encode())
    assert resp.status_code == 200
    assert await n1.state() == "POW"


async def test_training_start_stop_status(n1: Node) -> None:
    assert (await n1.get("/api/v1/train/status")).json() == {"status": False}
    assert (await n1.post("/api/v1/train/start", {"train_config": {}})).json() == {"status": "Training started"}
    assert (await n1.post("/api/v1/train/start", {"train_config": {}})).status_code == 400
    assert await n1.state() == "TRAIN"
    assert (await n1.post("/api/v1/train/stop")).json() == {"status": "Training stopped"}
    assert (await n1.post("/api/v1/train/stop")).status_code == 400


# --- generated batches -------------------------------------------------------------------------------


async def test_generated_batches_reach_the_callback_in_the_nodes_nonce_space(
    sim: SimMLNodeServer, n1: Node, receiver: Receiver
) -> None:
    await n1.post("/api/v1/pow/init/generate", init_body(receiver.url, node_id=2, node_count=5))
    await wait_until(lambda: len(receiver.generated) >= 3)

    seen: list[int] = []
    for batch in receiver.generated:
        # The real Sender's key order (reference/http.md §6.2).
        assert list(batch) == ["public_key", "block_hash", "block_height", "nonces", "dist", "node_id"]
        assert (batch["public_key"], batch["block_hash"], batch["block_height"], batch["node_id"]) == (
            PUBKEY,
            BLOCK_HASH,
            240,
            2,
        )
        assert batch["nonces"] and len(batch["nonces"]) == len(batch["dist"])
        for nonce, dist in zip(batch["nonces"], batch["dist"], strict=True):
            assert nonce % 5 == 2
            assert dist < DEFAULT_R_TARGET
            assert dist == sim_dist(PUBKEY, BLOCK_HASH, 240, nonce)
        seen.extend(batch["nonces"])
    assert len(seen) == len(set(seen)), "a nonce was sent twice"
    assert seen == sorted(seen)
    # Every nonce of the node's space up to the last one sent was tried; only those >= r_target are missing.
    tried = range(2, seen[-1] + 1, 5)
    assert seen == [n for n in tried if sim_dist(PUBKEY, BLOCK_HASH, 240, n) < DEFAULT_R_TARGET]
    assert [b.model_dump() for b in sim.node("n1").generated_posted][: len(receiver.generated)] == (
        receiver.generated[: len(sim.node("n1").generated_posted)]
    )


async def test_two_nodes_mine_disjoint_nonces(
    sim: SimMLNodeServer, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    sim.add_node("n2")
    await Node(http, sim.node_url("n1")).post(
        "/api/v1/pow/init/generate", init_body(receiver.url, node_id=1, node_count=3)
    )
    await Node(http, sim.node_url("n2")).post(
        "/api/v1/pow/init/generate", init_body(receiver.url, node_id=2, node_count=3)
    )
    await wait_until(lambda: {b["node_id"] for b in receiver.generated} == {1, 2})
    by_node: dict[int, set[int]] = {1: set(), 2: set()}
    for batch in receiver.generated:
        by_node[batch["node_id"]].update(batch["nonces"])
    assert by_node[1] and by_node[2]
    assert not by_node[1] & by_node[2]


async def test_stop_halts_the_batches(
    sim: SimMLNodeServer, http: httpx.AsyncClient, n1: Node, receiver: Receiver
) -> None:
    # A second node keeps generating at the same interval: its batches are the clock the test waits on.
    sim.add_node("clock")
    await n1.post("/api/v1/pow/init/generate", init_body(receiver.url, node_id=1))
    await Node(http, sim.node_url("clock")).post("/api/v1/pow/init/generate", init_body(receiver.url, node_id=2))

    def posted(node_id: int) -> int:
        return sum(1 for b in receiver.generated if b["node_id"] == node_id)

    await wait_until(lambda: posted(1) >= 2)
    node = sim.node("n1")
    loop = node.batch_task
    assert loop is not None and node.batch_loop_running
    await n1.post("/api/v1/stop")
    assert not node.batch_loop_running
    # The loop is cancelled, not left to run out: once it has ended, nothing of it can post again.
    await asyncio.wait([loop], timeout=10)
    assert loop.cancelled()
    count, ticks = posted(1), posted(2)
    # n1's next tick would have come within one interval of the stop; three ticks of the clock are more.
    await wait_until(lambda: posted(2) >= ticks + 3)
    assert posted(1) == count
    assert node.snapshot()["pending_generated"] == 0


async def test_validate_phase_sends_no_generated_batches(n1: Node, receiver: Receiver) -> None:
    await n1.post("/api/v1/pow/init/generate", init_body(receiver.url))
    await wait_until(lambda: len(receiver.generated) >= 1)
    await n1.post("/api/v1/pow/init/validate", init_body(receiver.url))
    assert (await n1.get("/api/v1/pow/status")).json()["status"] == "VALIDATING"
    # A batch handed over for validation comes back on the next tick of the loop, now in the VALIDATE phase.
    # The first one also sees out a generated batch still being posted when the phase changed.
    sample = {"public_key": PUBKEY, "block_hash": BLOCK_HASH, "block_height": 240, "nonces": [1, 4],
              "dist": [0.1, 0.2], "node_id": 0}
    await n1.post("/api/v1/pow/validate", sample)
    await wait_until(lambda: len(receiver.validated) == 1)
    count = len(receiver.generated)
    for ticks in (2, 3):
        await n1.post("/api/v1/pow/validate", sample)
        await wait_until(lambda ticks=ticks: len(receiver.validated) == ticks)
    assert len(receiver.generated) == count


async def test_failed_posts_are_retried_and_nothing_is_lost(n1: Node, receiver: Receiver) -> None:
    receiver.fail_next = 3
    await n1.post("/api/v1/pow/init/generate", init_body(receiver.url, node_id=1, node_count=2))
    await wait_until(lambda: len(receiver.generated) >= 5)
    nonces = [n for b in receiver.generated for n in b["nonces"]]
    expected = [n for n in range(1, nonces[-1] + 1, 2) if sim_dist(PUBKEY, BLOCK_HASH, 240, n) < DEFAULT_R_TARGET]
    assert nonces == expected


async def test_unreachable_callback_keeps_batches_pending(sim: SimMLNodeServer, n1: Node) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    await n1.post("/api/v1/pow/init/generate", init_body(dead))
    node = sim.node("n1")
    await wait_until(lambda: node.snapshot()["pending_generated"] >= 2)
    assert node.last_post_error is not None and "/v1/poc-batches/generated" in node.last_post_error
    assert len(node.generated_posted) == 0


async def test_same_init_again_keeps_generating_a_new_one_restarts(
    sim: SimMLNodeServer, n1: Node, receiver: Receiver
) -> None:
    await n1.post("/api/v1/pow/init/generate", init_body(receiver.url))
    await wait_until(lambda: len(receiver.generated) >= 2)
    task = sim.node("n1").batch_task
    await n1.post("/api/v1/pow/init/generate", init_body(receiver.url))
    assert sim.node("n1").batch_task is task  # identical request: the real node does not re-initialise

    await n1.post("/api/v1/pow/init/generate", init_body(receiver.url, block_height=300))
    assert sim.node("n1").batch_task is not task
    assert task is not None
    await wait_until(task.done)
    assert task.cancelled()
    await wait_until(lambda: receiver.generated[-1]["block_height"] == 300)


# --- validation --------------------------------------------------------------------------------------


async def test_validation_reports_honest_and_forged_batches(n1: Node, receiver: Receiver) -> None:
    prover_key = "03" + "cd" * 32
    honest = [n for n in range(200) if sim_dist(prover_key, BLOCK_HASH, 240, n) < DEFAULT_R_TARGET][:40]
    forged = [n for n in range(200) if sim_dist(prover_key, BLOCK_HASH, 240, n) > DEFAULT_R_TARGET][:5]

    def batch(nonces: list[int], claimed: list[float]) -> dict[str, Any]:
        return {
            "public_key": prover_key,
            "block_hash": BLOCK_HASH,
            "block_height": 240,
            "nonces": nonces,
            "dist": claimed,
            "node_id": 0,
        }

    assert (await n1.post("/api/v1/pow/validate", batch(honest, [0.1] * 40))).status_code == 400  # PoW not running
    await n1.post("/api/v1/pow/init/validate", init_body(receiver.url))
    missing_node_id = batch(honest, [0.1] * 40)
    del missing_node_id["node_id"]
    assert (await n1.post("/api/v1/pow/validate", missing_node_id)).status_code == 422

    honest_dist = [sim_dist(prover_key, BLOCK_HASH, 240, n) for n in honest]
    resp = await n1.post("/api/v1/pow/validate", batch(honest, honest_dist))
    assert (resp.status_code, resp.json()) == (200, None)
    await n1.post("/api/v1/pow/validate", batch(honest + forged, honest_dist + [0.5] * 5))
    await wait_until(lambda: len(receiver.validated) == 2)

    good, bad = receiver.validated
    assert list(good) == [
        "public_key", "block_hash", "block_height", "nonces", "dist", "node_id",
        "received_dist", "r_target", "fraud_threshold", "n_invalid", "probability_honest", "fraud_detected",
    ]  # fmt: skip
    assert (good["public_key"], good["nonces"], good["dist"], good["received_dist"]) == (
        prover_key,
        honest,
        honest_dist,
        honest_dist,
    )
    assert (good["n_invalid"], good["probability_honest"], good["fraud_detected"]) == (0, 1.0, False)
    assert (good["r_target"], good["fraud_threshold"]) == (DEFAULT_R_TARGET, 1e-7)
    assert bad["n_invalid"] == 5 and bad["fraud_detected"] is True
    assert bad["probability_honest"] < 1e-7
    assert receiver.generated == []


def test_probability_honest_matches_the_reference_payload() -> None:
    # reference/http.md §6.2's observed payload: 1 invalid of 2 → 0.00099975.
    assert probability_honest(1, 2) == pytest.approx(0.00099975, rel=1e-9)
    assert probability_honest(0, 500) == 1.0
    # 1 - (1 - p)^n for one invalid nonce, computed independently.
    assert probability_honest(1, 1000) == pytest.approx(1 - (1 - 5e-4) ** 1000, rel=1e-9)
    assert 0 < probability_honest(5, 45) < 1e-10


def test_sim_dist_is_deterministic_and_in_range() -> None:
    values = [sim_dist(PUBKEY, BLOCK_HASH, 1, n) for n in range(2000)]
    assert values == [sim_dist(PUBKEY, BLOCK_HASH, 1, n) for n in range(2000)]
    assert all(0 <= v < DIST_SCALE for v in values)
    below = sum(v < DEFAULT_R_TARGET for v in values) / len(values)
    assert 0.6 < below < 0.8
    assert sim_dist(PUBKEY.upper(), BLOCK_HASH, 1, 0) != sim_dist(PUBKEY, BLOCK_HASH, 1, 0)


# --- inference ---------------------------------------------------------------------------------------


async def test_inference_up_records_model_and_args_and_serves(sim: SimMLNodeServer, n1: Node) -> None:
    body = {"model": "Qwen/Qwen2.5-7B-Instruct", "dtype": "float16", "additional_args": ["--tp", "2"]}
    resp = await n1.post("/api/v1/inference/up", body)
    assert (resp.status_code, resp.json()) == (200, {"status": "OK"})
    node = sim.node("n1")
    assert (node.model, node.dtype, node.args) == ("Qwen/Qwen2.5-7B-Instruct", "float16", ["--tp", "2"])
    assert [u.model_dump() for u in node.inference_ups] == [body]
    assert await n1.state() == "INFERENCE"
    assert (await n1.get("/health")).status_code == 200

    chat = {"model": "Qwen/Qwen2.5-7B-Instruct", "seed": 3, "messages": [{"role": "user", "content": "hello there"}]}
    first = (await n1.post("/v1/chat/completions", chat)).json()
    second = (await n1.post("/v1/chat/completions", chat)).json()
    assert first["choices"][0]["message"]["content"]
    assert first["choices"] == second["choices"]  # same (model, seed, messages), same answer
    assert first["model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert (await n1.post("/v1/chat/completions", {**chat, "model": "other"})).status_code == 404

    assert (await n1.post("/api/v1/inference/down")).json() == {"status": "OK"}
    assert (await n1.get("/health")).status_code == 503
    assert (await n1.post("/v1/chat/completions", chat)).status_code == 503


async def test_chat_completion_stream_is_sse(n1: Node) -> None:
    await n1.post("/api/v1/inference/up", {"model": "m", "dtype": "float16"})
    resp = await n1.post(
        "/v1/chat/completions", {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert '"delta":{"content":"' in resp.text
    assert resp.text.rstrip().endswith("data: [DONE]")


async def test_inference_up_waits_for_the_load_and_health_fails_meanwhile(sim: SimMLNodeServer, n1: Node) -> None:
    sim.node("n1").load_delay = 0.3
    started = time.monotonic()
    up = asyncio.create_task(n1.post("/api/v1/inference/up", {"model": "m", "dtype": "float16"}))
    await wait_until(lambda: sim.node("n1").model == "m")
    assert await n1.state() == "INFERENCE"
    assert (await n1.get("/health")).status_code == 503
    assert (await up).json() == {"status": "OK"}
    assert time.monotonic() - started >= 0.3
    assert (await n1.get("/health")).status_code == 200


async def test_stop_during_load_makes_inference_up_report_error(sim: SimMLNodeServer, n1: Node) -> None:
    sim.node("n1").load_delay = 30.0
    started = time.monotonic()
    up = asyncio.create_task(n1.post("/api/v1/inference/up", {"model": "m", "dtype": "float16"}))
    await wait_until(lambda: sim.node("n1").model == "m")
    await n1.post("/api/v1/stop")
    resp = await up
    assert time.monotonic() - started < 5.0  # the load was aborted, not waited out
    assert resp.status_code == 200 and resp.json()["status"] == "ERROR"
    assert await n1.state() == "STOPPED"
    assert (await n1.get("/health")).status_code == 503


async def test_server_shutdown_aborts_a_loading_inference_up(http: httpx.AsyncClient) -> None:
    srv = await start_sim_mlnodes(["slow"], load_delay=30.0)
    up = asyncio.create_task(http.post(srv.node_url("slow") + "/api/v1/inference/up", json={"model": "m"}))
    await wait_until(lambda: srv.node("slow").model == "m")
    started = time.monotonic()
    await srv.stop()
    assert time.monotonic() - started < 3.0
    assert (await up).json()["status"] == "ERROR"


async def test_inference_up_error_uses_the_real_nodes_200_error_shape(sim: SimMLNodeServer, n1: Node) -> None:
    sim.node("n1").inference_up_error = "CUDA out of memory"
    resp = await n1.post("/api/v1/inference/up", {"model": "m", "dtype": "float16"})
    assert (resp.status_code, resp.json()) == (200, {"status": "ERROR", "message": "CUDA out of memory"})
    assert await n1.state() == "STOPPED"


# --- faults ------------------------------------------------------------------------------------------


async def test_latency_fault_delays_the_answer(sim: SimMLNodeServer, n1: Node) -> None:
    sim.set_fault("n1", latency=0.25)
    started = time.monotonic()
    assert await n1.state() == "STOPPED"
    assert time.monotonic() - started >= 0.25


async def test_status_fault_limited_to_a_path_and_a_count(sim: SimMLNodeServer, n1: Node) -> None:
    sim.set_fault("n1", status=500, path_prefix="/api/v1/state", count=2)
    assert (await n1.get("/api/v1/pow/status")).status_code == 200
    assert (await n1.get("/api/v1/state")).status_code == 500
    assert (await n1.get("/api/v1/state")).status_code == 500
    assert (await n1.get("/api/v1/state")).status_code == 200
    assert sim.node("n1").fault is None
    assert [c.fault for c in sim.calls("n1")] == [None, "status:500", "status:500", None]


async def test_timeout_fault_holds_the_request_until_the_client_gives_up(
    sim: SimMLNodeServer, http: httpx.AsyncClient
) -> None:
    sim.set_fault("n1", timeout=True)
    with pytest.raises(httpx.ReadTimeout):
        await http.get(sim.node_url("n1") + "/api/v1/state", timeout=0.2)
    sim.clear_fault("n1")
    assert (await http.get(sim.node_url("n1") + "/api/v1/state")).status_code == 200


async def test_refuse_fault_closes_the_connection_without_a_response(
    sim: SimMLNodeServer, http: httpx.AsyncClient
) -> None:
    sim.set_fault("n1", refuse=True)
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get(sim.node_url("n1") + "/api/v1/state")
    sim.add_node("n2")  # other nodes on the same port are unaffected
    assert (await http.get(sim.node_url("n2") + "/api/v1/state")).status_code == 200


async def test_faults_can_be_set_over_http(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    resp = await http.put(sim.url + "/sim/nodes/n1/fault", json={"status": 503, "count": 1})
    assert resp.status_code == 200
    assert (await http.get(sim.node_url("n1") + "/api/v1/state")).status_code == 503
    assert (await http.get(sim.node_url("n1") + "/api/v1/state")).status_code == 200
    await http.put(sim.url + "/sim/nodes/n1/fault", json={"status": 500})
    assert (await http.delete(sim.url + "/sim/nodes/n1/fault")).status_code == 204
    assert (await http.get(sim.node_url("n1") + "/api/v1/state")).status_code == 200


# --- inspection --------------------------------------------------------------------------------------


async def test_inspection_lists_every_call(sim: SimMLNodeServer, http: httpx.AsyncClient, receiver: Receiver) -> None:
    n1 = Node(http, sim.node_url("n1"))
    before = time.time()
    await n1.get("/api/v1/state")
    await n1.post("/api/v1/pow/init/generate", init_body(receiver.url))
    await n1.post("/api/v1/stop")
    await n1.get("/health")

    calls = (await http.get(sim.url + "/sim/nodes/n1/calls")).json()["calls"]
    assert [(c["method"], c["path"]) for c in calls] == [
        ("GET", "/api/v1/state"),
        ("POST", "/api/v1/pow/init/generate"),
        ("POST", "/api/v1/stop"),
        ("GET", "/health"),
    ]
    assert calls[1]["json"] == init_body(receiver.url)
    assert all(before <= c["time"] <= time.time() for c in calls)
    assert [c.to_json() for c in sim.calls("n1")] == calls

    nodes = (await http.get(sim.url + "/sim/nodes")).json()["nodes"]
    assert [(n["name"], n["segment"], n["state"]) for n in nodes] == [("n1", "/nodes/n1", "STOPPED")]
    assert (await http.delete(sim.url + "/sim/nodes/n1/calls")).status_code == 204
    assert sim.calls("n1") == []
    assert (await http.get(sim.url + "/sim/nodes/nope/calls")).status_code == 404
    assert (await http.get(sim.url + "/nodes/nope/api/v1/state")).status_code == 404


async def test_nodes_can_be_added_over_http(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    resp = await http.post(sim.url + "/sim/nodes", json={"name": "late"})
    assert resp.status_code == 201 and resp.json()["segment"] == "/nodes/late"
    assert (await http.post(sim.url + "/sim/nodes", json={"name": "late"})).status_code == 409
    assert (await http.post(sim.url + "/sim/nodes", json={"name": "bad/name"})).status_code == 400
    assert (await http.get(sim.node_url("late") + "/api/v1/state")).json() == {"state": "STOPPED"}


async def test_batches_posted_are_inspectable(
    sim: SimMLNodeServer, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    await Node(http, sim.node_url("n1")).post("/api/v1/pow/init/generate", init_body(receiver.url))
    await wait_until(lambda: len(receiver.generated) >= 2)
    batches = (await http.get(sim.url + "/sim/nodes/n1/batches")).json()
    assert batches["generated"][:2] == receiver.generated[:2]
    assert batches["validated"] == []


# --- lifecycle ---------------------------------------------------------------------------------------


async def test_shutdown_cancels_loops_and_releases_held_requests(receiver: Receiver) -> None:
    srv = await start_sim_mlnodes(["a", "b"], batch_interval=INTERVAL)
    async with httpx.AsyncClient(timeout=10) as http:
        for name, node_id in (("a", 1), ("b", 2)):
            await Node(http, srv.node_url(name)).post(
                "/api/v1/pow/init/generate", init_body(receiver.url, node_id=node_id)
            )
        await wait_until(lambda: {b["node_id"] for b in receiver.generated} == {1, 2})
        tasks = [srv.node("a").batch_task, srv.node("b").batch_task]
        srv.set_fault("b", timeout=True)
        held = asyncio.create_task(http.get(srv.node_url("b") + "/api/v1/state"))
        await wait_until(lambda: len(srv.calls("b")) >= 2)

        await srv.stop()
        assert all(t is not None and t.cancelled() for t in tasks)
        # The held request was cut by the stop, not left hanging until this client gave up on it.
        with pytest.raises(httpx.TransportError) as info:
            await held
        assert not isinstance(info.value, httpx.TimeoutException), repr(info.value)
        count = len(receiver.generated)
        # Another server's node, generating at the same interval, is the clock: the stopped nodes' next
        # ticks would have come within one interval of the stop, three ticks of the clock are more.
        async with SimMLNodeServer(batch_interval=INTERVAL, nonces_per_batch=16) as clock:
            clock.add_node("c")
            await Node(http, clock.node_url("c")).post("/api/v1/pow/init/generate",
                                                       init_body(receiver.url, node_id=3, node_count=4))
            await wait_until(lambda: sum(1 for b in receiver.generated if b["node_id"] == 3) >= 3)
    assert [b for b in receiver.generated if b["node_id"] in (1, 2)] == receiver.generated[:count]


async def test_a_crashing_loop_is_logged(
    sim: SimMLNodeServer,
    n1: Node,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = sim.node("n1")

    def boom(*args: object) -> None:
        raise RuntimeError("generator exploded")

    monkeypatch.setattr(node, "_generate", boom)
    with structlog.testing.capture_logs() as logs:
        await n1.post("/api/v1/pow/init/generate", init_body(receiver.url))
        await wait_until(lambda: sim.tasks.crashes == 1)
    assert "generator exploded" in (node.loop_error or "")
    assert any(e["event"] == "background task crashed" and e["task"] == "sim-mlnode-n1" and e["exc_info"]
               for e in logs)


async def test_server_binds_an_os_chosen_port_and_frees_it_on_exit() -> None:
    srv = SimMLNodeServer(batch_interval=INTERVAL)
    with pytest.raises(RuntimeError):
        _ = srv.url
    srv.add_node("x")
    async with srv:
        assert srv.port > 0 and srv.url == f"http://127.0.0.1:{srv.port}"
        assert srv.node_url("x") == srv.url + "/nodes/x"
        async with httpx.AsyncClient() as http:
            assert (await http.get(srv.node_url("x") + "/api/v1/state")).status_code == 200
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(srv.node_url("x") + "/api/v1/state")
