"""The ML node client against real servers on 127.0.0.1: exact paths and bodies, status handling, typed errors.

Most tests talk to the simulated ML node server (dapi.devnet.mlnode) and read back what it recorded; a few
malformed answers that the simulator never gives come from a small in-process ASGI app.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from dapi.devnet.mlnode import RecordedCall, SimMLNodeServer
from dapi.mlnodeclient import (
    MAINNET_PARAMS,
    InitDto,
    MLNodeBadResponse,
    MLNodeClient,
    MLNodeCommandFailed,
    MLNodeConflict,
    MLNodeError,
    MLNodeHTTPError,
    MLNodeState,
    MLNodeTimeout,
    MLNodeTimeouts,
    MLNodeUnavailable,
    PowState,
    ProofBatch,
    StartTrainingRequest,
    build_init_dto,
    create_http_client,
    node_base_url,
    poc_batches_url,
)
from dapi.runtime.serving import EmbeddedServer

# reference/http.md §4.1: the body BuildInitDto produces, with MainNetParams spelled out.
MAINNET_PARAMS_JSON = {
    "dim": 1792,
    "n_layers": 64,
    "n_heads": 64,
    "n_kv_heads": 64,
    "vocab_size": 8196,
    "ffn_dim_multiplier": 10.0,
    "multiple_of": 8192,
    "norm_eps": 1e-5,
    "rope_theta": 10000,
    "use_scaled_rope": False,
    "seq_len": 256,
}
PUBKEY_UPPER = "02AB" + "CD" * 31
BLOCK_HASH = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"batch_interval": 0.05, "nodes": ("n1",)}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with create_http_client(max_connections=10) as client:
        yield client


@pytest.fixture
def client(sim: SimMLNodeServer, http: httpx.AsyncClient) -> MLNodeClient:
    return MLNodeClient(sim.node_url("n1"), sim.node_url("n1"), http=http)


def init_dto(callback: str = "http://127.0.0.1:9100", node_num: int = 1, node_count: int = 3) -> InitDto:
    return build_init_dto(
        block_height=120,
        block_hash=BLOCK_HASH,
        public_key=PUBKEY_UPPER,
        node_num=node_num,
        node_count=node_count,
        callback_url=callback,
    )


def last_call(sim: SimMLNodeServer, name: str = "n1") -> RecordedCall:
    return sim.calls(name)[-1]


# --- URL and InitDto helpers -------------------------------------------------------------------------


def test_node_base_url_is_scheme_host_port_segment() -> None:
    assert node_base_url("10.0.0.5", 8080, "") == "http://10.0.0.5:8080"
    assert node_base_url("ml-1", 5000, "/v3.0.8") == "http://ml-1:5000/v3.0.8"
    # Our fixes of inputs the reference would turn into unparsable URLs.
    assert node_base_url("ml-1", 5000, "v3") == "http://ml-1:5000/v3"
    assert node_base_url("::1", 8080) == "http://[::1]:8080"


def test_poc_batches_url_appends_the_legacy_path_once() -> None:
    assert poc_batches_url("http://api:9100") == "http://api:9100/v1/poc-batches"
    assert poc_batches_url("http://api:9100/") == "http://api:9100/v1/poc-batches"


def test_build_init_dto_has_the_reference_constants_and_our_node_count() -> None:
    dto = build_init_dto(
        block_height=120,
        block_hash=BLOCK_HASH,
        public_key=PUBKEY_UPPER,
        node_num=4,
        node_count=7,
        callback_url="http://api:9100",
    )
    assert dto.model_dump(mode="json") == {
        "block_hash": BLOCK_HASH,  # the chain's uppercase hex, untouched
        "block_height": 120,
        "public_key": PUBKEY_UPPER.lower(),
        "batch_size": 100,
        "r_target": 1.4013564660458173,
        "fraud_threshold": 1e-7,
        "params": MAINNET_PARAMS_JSON,
        "node_id": 4,
        "node_count": 7,
        "url": "http://api:9100/v1/poc-batches",
    }


def test_build_init_dto_refuses_a_public_key_that_is_not_hex() -> None:
    with pytest.raises(ValueError, match="hex"):
        build_init_dto(
            block_height=1,
            block_hash="AA",
            public_key="A1b2Qz0base64+key==",
            node_num=1,
            node_count=2,
            callback_url="http://api:9100",
        )


@pytest.mark.parametrize(("node_num", "node_count"), [(3, 3), (5, 2), (-1, 4)])
def test_build_init_dto_refuses_overlapping_nonce_spaces(node_num: int, node_count: int) -> None:
    with pytest.raises(ValueError, match="node_count"):
        build_init_dto(
            block_height=1,
            block_hash="AA",
            public_key="02aa",
            node_num=node_num,
            node_count=node_count,
            callback_url="http://api:9100",
        )


def test_mainnet_params_serialise_rope_theta_as_an_integer() -> None:
    # Go's Params.RopeTheta is an int: the wire carries 10000, not 10000.0.
    assert '"rope_theta":10000,' in MAINNET_PARAMS.model_dump_json()


@pytest.mark.parametrize("bad", ["", "ml-node:8080", "ftp://ml:21", "http://"])
def test_client_rejects_base_urls_that_are_not_http(bad: str) -> None:
    with pytest.raises(ValueError):
        MLNodeClient(bad, "http://ml:5000")


def test_for_node_composes_both_urls_like_the_reference() -> None:
    c = MLNodeClient.for_node("ml-1", poc_port=8080, poc_segment="/p", inference_port=5000, inference_segment="/i")
    assert (c.poc_url, c.inference_url) == ("http://ml-1:8080/p", "http://ml-1:5000/i")


# --- every call: path, method, body ------------------------------------------------------------------


async def test_stop_posts_without_a_body(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    await client.stop()
    call = last_call(sim)
    assert (call.method, call.path, call.json, call.content_type) == ("POST", "/api/v1/stop", None, None)


async def test_node_state_reads_the_state_route(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    assert await client.node_state() is MLNodeState.STOPPED
    assert (last_call(sim).method, last_call(sim).path) == ("GET", "/api/v1/state")


async def test_pow_status_without_controller_is_not_loaded(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    status = await client.pow_status()
    assert (status.status, status.is_model_initialized) == (PowState.NOT_LOADED, False)
    assert (last_call(sim).method, last_call(sim).path) == ("GET", "/api/v1/pow/status")


async def test_init_generate_posts_the_init_dto(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    await client.init_generate(init_dto(node_num=2, node_count=5))
    call = last_call(sim)
    assert (call.method, call.path, call.content_type) == ("POST", "/api/v1/pow/init/generate", "application/json")
    assert call.json == {
        "block_hash": BLOCK_HASH,
        "block_height": 120,
        "public_key": PUBKEY_UPPER.lower(),
        "batch_size": 100,
        "r_target": 1.4013564660458173,
        "fraud_threshold": 1e-7,
        "params": MAINNET_PARAMS_JSON,
        "node_id": 2,
        "node_count": 5,
        "url": "http://127.0.0.1:9100/v1/poc-batches",
    }
    assert type(call.json["params"]["rope_theta"]) is int
    assert await client.node_state() is MLNodeState.POW
    status = await client.pow_status()
    assert (status.status, status.is_model_initialized) == (PowState.GENERATING, True)


async def test_init_validate_posts_the_init_dto(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    dto = init_dto()
    await client.init_validate(dto)
    call = last_call(sim)
    assert (call.method, call.path) == ("POST", "/api/v1/pow/init/validate")
    assert call.json == dto.model_dump(mode="json")
    assert (await client.pow_status()).status is PowState.VALIDATING


async def test_validate_batch_posts_the_proof_batch_with_node_id_zero(
    sim: SimMLNodeServer, client: MLNodeClient
) -> None:
    await client.init_validate(init_dto())
    batch = ProofBatch(public_key="03cd", block_hash="H", block_height=120, nonces=[7, 9], dist=[0.1, 0.2])
    await client.validate_batch(batch)
    call = last_call(sim)
    assert (call.method, call.path) == ("POST", "/api/v1/pow/validate")
    assert list(call.json.items()) == [
        ("public_key", "03cd"),
        ("block_hash", "H"),
        ("block_height", 120),
        ("nonces", [7, 9]),
        ("dist", [0.1, 0.2]),
        ("node_id", 0),
    ]


async def test_inference_up_posts_model_dtype_and_args(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    await client.inference_up("Qwen/Qwen2.5-7B-Instruct", ["--quantization", "fp8"])
    call = last_call(sim)
    assert (call.method, call.path) == ("POST", "/api/v1/inference/up")
    assert call.json == {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "dtype": "float16",
        "additional_args": ["--quantization", "fp8"],
    }
    assert await client.node_state() is MLNodeState.INFERENCE


async def test_health_goes_to_the_inference_url_not_the_poc_url(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    # Two sim nodes stand in for the node's two ports, so the recorded calls show which base was used.
    sim.add_node("inf")
    client = MLNodeClient(sim.node_url("n1"), sim.node_url("inf"), http=http)
    assert await client.is_inference_healthy() is False  # 503 while nothing is loaded
    with pytest.raises(MLNodeHTTPError) as info:
        await client.inference_health()
    assert info.value.status == 503
    assert [(c.method, c.path) for c in sim.calls("inf")] == [("GET", "/health")] * 2
    assert sim.calls("n1") == []

    up = MLNodeClient(sim.node_url("inf"), sim.node_url("inf"), http=http)
    await up.inference_up("m", [])
    assert await client.is_inference_healthy() is True
    await client.inference_health()


async def test_training_calls(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    request = StartTrainingRequest(train_config={"project": "p", "train": {"micro_bs": 1}}, train_env={"TASK_ID": "7"})
    assert await client.training_status() is False
    await client.start_training(request)
    call = last_call(sim)
    assert (call.method, call.path, call.json) == (
        "POST",
        "/api/v1/train/start",
        {"train_config": {"project": "p", "train": {"micro_bs": 1}}, "train_env": {"TASK_ID": "7"}},
    )
    assert await client.training_status() is True
    assert (last_call(sim).method, last_call(sim).path) == ("GET", "/api/v1/train/status")
    assert await client.node_state() is MLNodeState.TRAIN


async def test_segment_of_the_base_url_is_kept_and_a_trailing_slash_ignored(
    sim: SimMLNodeServer, http: httpx.AsyncClient
) -> None:
    client = MLNodeClient(sim.node_url("n1") + "/", sim.node_url("n1") + "/", http=http)
    await client.node_state()
    assert last_call(sim).path == "/api/v1/state"


# --- typed errors ------------------------------------------------------------------------------------


async def test_409_from_the_service_guard_is_a_conflict(client: MLNodeClient) -> None:
    await client.init_generate(init_dto())
    with pytest.raises(MLNodeConflict) as info:
        await client.inference_up("m", [])
    err = info.value
    assert err.status == 409 and not err.retriable
    assert isinstance(err, MLNodeHTTPError)
    assert "Cannot run INFERENCE because MLNode is currently in POW mode" in str(err)
    assert err.call == "inference_up" and err.url.endswith("/nodes/n1/api/v1/inference/up")


async def test_500_is_a_retriable_http_error(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    sim.set_fault("n1", status=500)
    with pytest.raises(MLNodeHTTPError) as info:
        await client.init_generate(init_dto())
    assert info.value.status == 500 and info.value.retriable
    assert not isinstance(info.value, MLNodeConflict)
    assert "simulated fault" in info.value.body


async def test_400_is_not_retriable(client: MLNodeClient) -> None:
    # The real node answers 400 to pow/validate while PoW is not running.
    with pytest.raises(MLNodeHTTPError) as info:
        await client.validate_batch(ProofBatch(public_key="aa", block_hash="H", block_height=1, nonces=[1], dist=[0.1]))
    assert info.value.status == 400 and not info.value.retriable


async def test_refused_port_is_unavailable_not_timeout(http: httpx.AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port any more: the connect is refused at once.
    client = MLNodeClient(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}", http=http)
    for call in (client.stop(), client.node_state(), client.init_generate(init_dto())):
        with pytest.raises(MLNodeUnavailable) as info:
            await call
        assert not isinstance(info.value, MLNodeTimeout)
        assert info.value.retriable
    assert await client.is_inference_healthy() is False


async def test_connection_closed_without_answer_is_unavailable(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    sim.set_fault("n1", refuse=True)
    with pytest.raises(MLNodeUnavailable) as info:
        await client.node_state()
    assert info.value.retriable and not isinstance(info.value, MLNodeTimeout)


async def test_no_answer_is_a_timeout_within_the_call_deadline(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    sim.set_fault("n1", timeout=True)
    client = MLNodeClient(sim.node_url("n1"), sim.node_url("n1"), http=http, timeouts=MLNodeTimeouts(query=0.3))
    started = time.monotonic()
    with pytest.raises(MLNodeTimeout) as info:
        await client.node_state()
    assert 0.25 < time.monotonic() - started < 2.0
    assert info.value.retriable and isinstance(info.value, MLNodeUnavailable)


async def test_a_node_that_trickles_its_answer_still_hits_the_call_deadline(http: httpx.AsyncClient) -> None:
    # Each byte arrives well within httpx's read timeout; only a deadline on the whole call ends this.
    async def trickle(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b" "
                await asyncio.sleep(0.05)

        return StreamingResponse(body(), media_type="application/json")

    server = EmbeddedServer(Starlette(routes=[Route("/api/v1/state", trickle)]))
    await server.start()
    try:
        client = MLNodeClient(server.url, server.url, http=http, timeouts=MLNodeTimeouts(query=0.4))
        started = time.monotonic()
        with pytest.raises(MLNodeTimeout):
            await client.node_state()
        assert time.monotonic() - started < 2.0
    finally:
        await server.stop()


async def test_inference_up_has_its_own_longer_deadline(
    sim: SimMLNodeServer, client: MLNodeClient, http: httpx.AsyncClient
) -> None:
    sim.node("n1").load_delay = 0.5
    patient = MLNodeClient(
        sim.node_url("n1"),
        sim.node_url("n1"),
        http=http,
        timeouts=MLNodeTimeouts(query=0.2, command=0.2, inference_up=5),
    )
    await patient.inference_up("m", [])  # the load outlasts every other deadline and still succeeds

    await client.stop()
    hasty = MLNodeClient(sim.node_url("n1"), sim.node_url("n1"), http=http, timeouts=MLNodeTimeouts(inference_up=0.1))
    with pytest.raises(MLNodeTimeout):
        await hasty.inference_up("m", [])


async def test_inference_up_error_status_in_a_200_is_command_failed(sim: SimMLNodeServer, client: MLNodeClient) -> None:
    sim.node("n1").inference_up_error = "CUDA out of memory"
    with pytest.raises(MLNodeCommandFailed, match="CUDA out of memory") as info:
        await client.inference_up("m", [])
    assert not info.value.retriable


# --- answers the simulator never gives (in-process ASGI app) ------------------------------------------


def odd_node_app() -> Starlette:
    async def state(request: Request) -> Response:
        mode = request.headers.get("x-mode", "")
        return PlainTextResponse("not json") if mode == "text" else JSONResponse({"state": "MAINTENANCE"})

    async def pow_status(request: Request) -> Response:
        return JSONResponse({"status": 3})

    async def train_status(request: Request) -> Response:
        return JSONResponse([True])

    async def health(request: Request) -> Response:
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/api/v1/state", state),
            Route("/api/v1/pow/status", pow_status),
            Route("/api/v1/train/status", train_status),
            Route("/health", health),
        ]
    )


@pytest.fixture
async def odd_client() -> AsyncIterator[MLNodeClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=odd_node_app())) as http:
        yield MLNodeClient("http://ml", "http://ml", http=http)


async def test_unknown_state_value_is_unknown_not_an_error(odd_client: MLNodeClient) -> None:
    assert await odd_client.node_state() is MLNodeState.UNKNOWN


async def test_malformed_bodies_are_bad_responses(odd_client: MLNodeClient) -> None:
    with pytest.raises(MLNodeBadResponse):
        await odd_client.pow_status()  # status is a number
    with pytest.raises(MLNodeBadResponse):
        await odd_client.training_status()  # not an object


async def test_non_json_state_is_a_bad_response() -> None:
    app = odd_node_app()

    async def add_mode(request: httpx.Request) -> None:
        request.headers["x-mode"] = "text"

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), event_hooks={"request": [add_mode]}) as http:
        with pytest.raises(MLNodeBadResponse, match="not JSON"):
            await MLNodeClient("http://ml", "http://ml", http=http).node_state()


async def test_health_must_be_exactly_200(odd_client: MLNodeClient) -> None:
    with pytest.raises(MLNodeHTTPError) as info:
        await odd_client.inference_health()
    assert info.value.status == 204
    assert await odd_client.is_inference_healthy() is False


async def test_inference_up_ignores_a_non_json_success_body() -> None:
    # "Ignores" the body, not the answer: a plain-text 200 is a success (the call returns None after
    # one POST that carried the request), while the same plain text with a 500 is still a failure.
    received: list[tuple[str, Any]] = []
    status = 200

    async def up(request: Request) -> Response:
        received.append((request.headers.get("content-type", ""), await request.json()))
        return PlainTextResponse("started", status_code=status)

    app = Starlette(routes=[Route("/api/v1/inference/up", up, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        client = MLNodeClient("http://ml", "http://ml", http=http)
        assert await client.inference_up("Qwen/QwQ-32B", ["--quantization", "fp8"]) is None
        assert received == [("application/json", {
            "model": "Qwen/QwQ-32B", "dtype": "float16", "additional_args": ["--quantization", "fp8"],
        })]
        status = 500
        with pytest.raises(MLNodeHTTPError) as info:
            await client.inference_up("Qwen/QwQ-32B", [])
        assert (info.value.status, info.value.body) == (500, "started")
        assert len(received) == 2


def test_every_error_is_an_mlnode_error() -> None:
    for cls in (
        MLNodeUnavailable,
        MLNodeTimeout,
        MLNodeHTTPError,
        MLNodeConflict,
        MLNodeCommandFailed,
        MLNodeBadResponse,
    ):
        assert issubclass(cls, MLNodeError)


# --- connection pool ownership -----------------------------------------------------------------------


async def test_shared_pool_survives_aclose_and_own_pool_is_closed(sim: SimMLNodeServer) -> None:
    shared = create_http_client(max_connections=4)
    try:
        sim.add_node("n2")
        a = MLNodeClient(sim.node_url("n1"), sim.node_url("n1"), http=shared)
        b = MLNodeClient(sim.node_url("n2"), sim.node_url("n2"), http=shared)
        await asyncio.gather(a.node_state(), b.node_state())
        await a.aclose()
        assert await b.node_state() is MLNodeState.STOPPED  # the pool a used is still open
    finally:
        await shared.aclose()

    async with MLNodeClient(sim.node_url("n1"), sim.node_url("n1")) as own:
        await own.node_state()
    with pytest.raises(RuntimeError):
        await own.node_state()  # its private pool was closed on exit


async def test_many_nodes_share_one_pool(http: httpx.AsyncClient) -> None:
    async with SimMLNodeServer(batch_interval=0.05) as srv:
        clients = []
        for i in range(50):
            srv.add_node(f"m{i}")
            clients.append(MLNodeClient(srv.node_url(f"m{i}"), srv.node_url(f"m{i}"), http=http))
        states = await asyncio.gather(*(c.node_state() for c in clients))
        assert set(states) == {MLNodeState.STOPPED}
        assert all(len(srv.calls(f"m{i}")) == 1 for i in range(50))
