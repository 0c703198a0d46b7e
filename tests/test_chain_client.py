"""The chain client over both transports, against in-process servers speaking the real wire formats.

One store of protobuf answers is served twice: by a grpc.aio server (raw method paths) and by a
CometBFT-shaped JSON-RPC server (``abci_query`` with hex data, base64 values). Both transports must
decode it to identical objects, and failures must map to the same error types.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dapi.chain.broadcast import GrpcBroadcaster, RpcBroadcaster
from dapi.chain.client import connect
from dapi.chain.errors import ChainHeightPruned, ChainNotFound, ChainRejected, ChainUnavailable
from dapi.chain.query import AbciTransport, ChainQuery, GrpcTransport
from dapi.chain.rpc import AbciQueryResult, CometRPC, websocket_url
from dapi.chain.tx import tx_hash
from dapi.config import ChainNodeConfig
from dapi.gen.cosmos.auth.v1beta1 import auth_pb2
from dapi.gen.cosmos.auth.v1beta1 import query_pb2 as auth_q
from dapi.gen.cosmos.base.abci.v1beta1 import abci_pb2
from dapi.gen.cosmos.tx.v1beta1 import service_pb2
from dapi.gen.inference.inference import (
    epoch_group_data_pb2 as egd,
)
from dapi.gen.inference.inference import (
    epoch_pb2,
    hardware_node_pb2,
    model_pb2,
    params_pb2,
    pocbatch_pb2,
)
from dapi.gen.inference.inference import query_pb2 as q
from dapi.runtime.serving import start_server

ADDRESS = "gonka1helduaxd0n4q3mp6w8f5vt8x2u6t9whf74jpwe"
BLOCK_HASH = "4F1E0C8D9A7B6E5D4C3B2A1908F7E6D5C4B3A29180706F5E4D3C2B1A09F8E7D6"


def _params() -> params_pb2.Params:
    return params_pb2.Params(
        epoch_params=params_pb2.EpochParams(
            epoch_length=40,
            poc_stage_duration=6,
            poc_exchange_duration=2,
            poc_validation_delay=1,
            poc_validation_duration=4,
            set_new_validators_delay=2,
            default_unit_of_compute_price=100,
        ),
        poc_params=params_pb2.PocParams(default_difficulty=5, validation_sample_size=200),
        validation_params=params_pb2.ValidationParams(timestamp_expiration=10, timestamp_advance=10),
    )


def _model(model_id: str) -> model_pb2.Model:
    return model_pb2.Model(
        id=model_id,
        units_of_compute_per_token=1000,
        hf_repo=model_id,
        hf_commit="abc",
        model_args=["--tp", "1"],
        v_ram=24,
        throughput_per_nonce=1000,
        validation_threshold=params_pb2.Decimal(value=85, exponent=-2),
    )


def _group(model_id: str) -> egd.EpochGroupData:
    return egd.EpochGroupData(
        poc_start_block_height=80,
        epoch_index=2,
        model_id=model_id,
        unit_of_compute_price=100,
        total_weight=30,
        sub_group_models=[] if model_id else ["Qwen/A", "Qwen/B"],
        model_snapshot=_model(model_id) if model_id else None,
        validation_weights=[
            egd.ValidationWeight(
                member_address=ADDRESS,
                weight=30,
                reputation=1,
                ml_nodes=[
                    egd.MLNodeInfo(node_id="n1", poc_weight=30, throughput=30000, timeslot_allocation=[True, False])
                ],
            )
        ],
    )


def _store() -> dict[tuple[str, bytes], Message]:
    account = auth_pb2.BaseAccount(address=ADDRESS, account_number=42, sequence=7)
    packed = AnyPb(type_url="/cosmos.auth.v1beta1.BaseAccount", value=account.SerializeToString())
    answers: list[tuple[str, Message, Message]] = [
        ("/inference.inference.Query/Params", q.QueryParamsRequest(), q.QueryParamsResponse(params=_params())),
        (
            "/inference.inference.Query/EpochInfo",
            q.QueryEpochInfoRequest(),
            q.QueryEpochInfoResponse(
                block_height=95, params=_params(), latest_epoch=epoch_pb2.Epoch(index=2, poc_start_block_height=80)
            ),
        ),
        (
            "/inference.inference.Query/CurrentEpochGroupData",
            q.QueryCurrentEpochGroupDataRequest(),
            q.QueryCurrentEpochGroupDataResponse(epoch_group_data=_group("")),
        ),
        (
            "/inference.inference.Query/EpochGroupData",
            q.QueryGetEpochGroupDataRequest(epoch_index=2, model_id="Qwen/A"),
            q.QueryGetEpochGroupDataResponse(epoch_group_data=_group("Qwen/A")),
        ),
        (
            "/inference.inference.Query/ModelsAll",
            q.QueryModelsAllRequest(),
            q.QueryModelsAllResponse(model=[_model("Qwen/A"), _model("Qwen/B")]),
        ),
        (
            "/inference.inference.Query/HardwareNodes",
            q.QueryHardwareNodesRequest(participant=ADDRESS),
            q.QueryHardwareNodesResponse(
                nodes=hardware_node_pb2.HardwareNodes(
                    participant=ADDRESS,
                    hardware_nodes=[
                        hardware_node_pb2.HardwareNode(
                            local_id="n1",
                            status=hardware_node_pb2.INFERENCE,
                            models=["Qwen/A"],
                            hardware=[hardware_node_pb2.Hardware(type="H100", count=8)],
                            host="10.0.0.5",
                            port="8080",
                        )
                    ],
                )
            ),
        ),
        (
            "/inference.inference.Query/PocBatchesForStage",
            q.QueryPocBatchesForStageRequest(block_height=80),
            q.QueryPocBatchesForStageResponse(
                poc_batch=[
                    pocbatch_pb2.PoCBatchesWithParticipants(
                        participant=ADDRESS,
                        pub_key="A1s9",
                        hex_pub_key="035b3d",
                        poc_batch=[
                            pocbatch_pb2.PoCBatch(
                                participant_address=ADDRESS,
                                poc_stage_start_block_height=80,
                                batch_id="b1",
                                nonces=[1, 5, 9],
                                dist=[0.1, 0.2, 0.3],
                                node_id="n1",
                            )
                        ],
                    )
                ]
            ),
        ),
        (
            "/cosmos.auth.v1beta1.Query/Account",
            auth_q.QueryAccountRequest(address=ADDRESS),
            auth_q.QueryAccountResponse(account=packed),
        ),
    ]
    return {(path, req.SerializeToString()): resp for path, req, resp in answers}


@dataclass
class FakeChain:
    """What both servers serve: query answers, one block, one included tx, and the txs broadcast."""

    store: dict[tuple[str, bytes], Message] = field(default_factory=_store)
    included: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # hash -> (height, code, log)
    received: list[bytes] = field(default_factory=list)
    checktx_code: int = 0
    heights: list[int] = field(default_factory=list)  # the block height each query asked for (0 = latest)
    lowest: int = 0  # blocks and states below this height are pruned

    def pruned_state(self, height: int) -> str | None:
        """The Cosmos SDK's answer to a query below the pruning horizon (baseapp CreateQueryContext)."""
        if 0 < height < self.lowest:
            return f"failed to load state at height {height}; version does not exist (latest height: 95): not found"
        return None

    def query(self, path: str, data: bytes) -> Message | None:
        return self.store.get((path, data))

    def broadcast(self, raw: bytes) -> tuple[int, str, str]:
        self.received.append(raw)
        return self.checktx_code, "" if self.checktx_code == 0 else "insufficient fee", tx_hash(raw)


def grpc_handler(chain: FakeChain) -> grpc.GenericRpcHandler:
    def make(path: str) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if path == "/cosmos.tx.v1beta1.Service/BroadcastTx":
                req = service_pb2.BroadcastTxRequest.FromString(request)
                code, log, h = chain.broadcast(req.tx_bytes)
                resp = abci_pb2.TxResponse(code=code, raw_log=log, txhash=h)
                return service_pb2.BroadcastTxResponse(tx_response=resp).SerializeToString()
            if path == "/cosmos.tx.v1beta1.Service/GetTx":
                h = service_pb2.GetTxRequest.FromString(request).hash.upper()
                if h not in chain.included:
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"tx not found: {h}")
                height, code, log = chain.included[h]
                resp = abci_pb2.TxResponse(height=height, code=code, raw_log=log, txhash=h)
                return service_pb2.GetTxResponse(tx_response=resp).SerializeToString()
            asked = dict(context.invocation_metadata() or ()).get("x-cosmos-block-height", "0")
            chain.heights.append(int(asked))
            if (pruned := chain.pruned_state(int(asked))) is not None:
                await context.abort(grpc.StatusCode.NOT_FOUND, pruned)
            answer = chain.query(path, request)
            if answer is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, "not found")
            return answer.SerializeToString()

        return handle

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(make(details.method))

    return Handler()


def jsonrpc_app(chain: FakeChain) -> Starlette:
    def result(req_id: Any, value: Any) -> JSONResponse:
        return JSONResponse({"jsonrpc": "2.0", "id": req_id, "result": value})

    def error(req_id: Any, data: str) -> JSONResponse:
        return JSONResponse(
            {"jsonrpc": "2.0", "id": req_id, "error": {"code": -32603, "message": "Internal error", "data": data}}
        )

    async def endpoint(request: Request) -> JSONResponse:
        body = await request.json()
        method, params, req_id = body["method"], body.get("params", {}), body.get("id")
        if method == "status":
            return result(
                req_id,
                {
                    "node_info": {"network": "gonka-testnet"},
                    "sync_info": {"latest_block_height": "95", "latest_block_hash": BLOCK_HASH, "catching_up": True},
                },
            )
        if method == "block":
            height = params.get("height", "95")
            if int(height) < chain.lowest:
                # CometBFT 0.38 (rpc/core getHeight), answered with HTTP 500.
                return JSONResponse({"jsonrpc": "2.0", "id": req_id, "error": {
                    "code": -32603, "message": "Internal error",
                    "data": f"height {height} is not available, lowest height is {chain.lowest}"}}, status_code=500)
            return result(req_id, {"block_id": {"hash": BLOCK_HASH}, "block": {"header": {"height": height}}})
        if method == "abci_query":
            chain.heights.append(int(params.get("height", "0")))
            if (pruned := chain.pruned_state(int(params.get("height", "0")))) is not None:
                return result(req_id, {"response": {"code": 38, "log": pruned, "value": None, "height": "0",
                                                    "codespace": "sdk"}})
            answer = chain.query(params["path"], bytes.fromhex(params["data"]))
            if answer is None:
                return result(
                    req_id,
                    {
                        "response": {
                            "code": 22,
                            "log": "rpc error: code = NotFound desc = not found",
                            "value": None,
                            "height": "95",
                        }
                    },
                )
            return result(
                req_id,
                {
                    "response": {
                        "code": 0,
                        "log": "",
                        "height": "95",
                        "value": base64.b64encode(answer.SerializeToString()).decode(),
                    }
                },
            )
        if method == "broadcast_tx_sync":
            code, log, h = chain.broadcast(base64.b64decode(params["tx"]))
            return result(req_id, {"code": code, "log": log, "hash": h, "codespace": "sdk" if code else ""})
        if method == "tx":
            h = base64.b64decode(params["hash"]).hex().upper()
            if h not in chain.included:
                return error(req_id, f"tx ({h}) not found")
            height, code, log = chain.included[h]
            return result(req_id, {"hash": h, "height": str(height), "tx_result": {"code": code, "log": log}})
        return error(req_id, f"unknown method {method}")

    return Starlette(routes=[Route("/", endpoint, methods=["POST"])])


@dataclass
class Servers:
    chain: FakeChain
    grpc_target: str
    rpc_url: str


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    chain = FakeChain()
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers([grpc_handler(chain)])
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    http = await start_server(jsonrpc_app(chain))
    try:
        yield Servers(chain, f"127.0.0.1:{port}", http.url)
    finally:
        await http.stop()
        await grpc_server.stop(None)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def both(servers: Servers) -> tuple[ChainQuery, ChainQuery]:
    return ChainQuery(GrpcTransport(servers.grpc_target)), ChainQuery(AbciTransport(CometRPC(servers.rpc_url)))


async def test_both_transports_decode_the_same_data_identically(servers: Servers) -> None:
    via_grpc, via_abci = await both(servers)
    try:
        for client in (via_grpc, via_abci):
            info = await client.epoch_info()
            assert info.latest_epoch.index == 2 and info.block_height == 95
            assert info.params.epoch_params.epoch_length == 40
        results: list[list[Any]] = []
        for client in (via_grpc, via_abci):
            results.append(
                [
                    await client.epoch_info(),
                    await client.params(),
                    await client.current_epoch_group_data(),
                    await client.epoch_group_data(2, "Qwen/A"),
                    await client.models_all(),
                    await client.hardware_nodes(ADDRESS),
                    await client.poc_batches_for_stage(80),
                    await client.account(ADDRESS),
                ]
            )
        assert results[0] == results[1]
        group = results[0][3]
        assert group.model_snapshot.id == "Qwen/A"
        assert list(group.validation_weights[0].ml_nodes[0].timeslot_allocation) == [True, False]
        assert [m.id for m in results[0][4]] == ["Qwen/A", "Qwen/B"]
        assert results[0][5].hardware_nodes[0].host == "10.0.0.5"
        assert list(results[0][6][0].poc_batch[0].nonces) == [1, 5, 9]
        assert results[0][6][0].poc_batch[0].node_id == "n1"
        assert results[0][7].account_number == 42
        assert via_grpc.calls == via_abci.calls == 9
    finally:
        await via_grpc.aclose()
        await via_abci.aclose()


async def test_missing_data_is_not_found_on_both_transports(servers: Servers) -> None:
    for client in await both(servers):
        try:
            with pytest.raises(ChainNotFound):
                await client.epoch_group_data(99, "")
        finally:
            await client.aclose()


async def test_connection_refused_is_unavailable_on_both_transports() -> None:
    port = closed_port()
    for client in (
        ChainQuery(GrpcTransport(f"127.0.0.1:{port}", timeout=2.0)),
        ChainQuery(AbciTransport(CometRPC(f"http://127.0.0.1:{port}"))),
    ):
        try:
            with pytest.raises(ChainUnavailable):
                await client.epoch_info()
        finally:
            await client.aclose()


async def test_abci_error_code_without_not_found_is_a_rejection(servers: Servers) -> None:
    # A chain error such as "inference is not ready" must not be mistaken for "does not exist".
    rpc = CometRPC(servers.rpc_url)

    async def not_ready(path: str, data: bytes, height: int = 0) -> AbciQueryResult:
        return AbciQueryResult(code=1, log="inference is not ready", value=b"", height=0)

    rpc.abci_query = not_ready  # type: ignore[method-assign]
    client = ChainQuery(AbciTransport(rpc))
    with pytest.raises(ChainRejected) as info:
        await client.params()
    assert info.value.code == 1
    await client.aclose()


async def test_rpc_status_block_and_websocket_url(servers: Servers) -> None:
    rpc = CometRPC(servers.rpc_url)
    try:
        status = await rpc.status()
        assert status.catching_up is True and status.latest_block_height == 95 and status.network == "gonka-testnet"
        block = await rpc.block(90)
        assert block.height == 90 and block.hash == BLOCK_HASH and block.hash == block.hash.upper()
        assert rpc.calls == 2
    finally:
        await rpc.aclose()
    assert websocket_url("http://node:26657") == "ws://node:26657/websocket"
    assert websocket_url("https://node:443/") == "wss://node:443/websocket"


async def test_rpc_unreachable_is_unavailable() -> None:
    rpc = CometRPC(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ChainUnavailable):
        await rpc.status()
    await rpc.aclose()


@pytest.mark.parametrize("use_grpc", [True, False])
async def test_broadcast_and_lookup_on_both_transports(servers: Servers, use_grpc: bool) -> None:
    broadcaster = GrpcBroadcaster(servers.grpc_target) if use_grpc else RpcBroadcaster(CometRPC(servers.rpc_url))
    raw = b"\x0a\x02hi"
    try:
        sent = await broadcaster.broadcast(raw)
        assert (sent.code, sent.hash) == (0, tx_hash(raw))
        assert servers.chain.received == [raw]
        with pytest.raises(ChainNotFound):
            await broadcaster.get_tx(sent.hash)
        servers.chain.included[sent.hash] = (101, 5, "out of window")
        found = await broadcaster.get_tx(sent.hash)
        assert (found.height, found.code, found.log) == (101, 5, "out of window")
        servers.chain.checktx_code = 13
        rejected = await broadcaster.broadcast(b"\x0a\x01x")
        assert rejected.code == 13 and "fee" in rejected.log
    finally:
        await broadcaster.aclose()


async def test_connect_picks_grpc_only_when_grpc_url_is_set(servers: Servers) -> None:
    with_grpc = connect(ChainNodeConfig(url=servers.rpc_url, grpc_url=servers.grpc_target))
    without = connect(ChainNodeConfig(url=servers.rpc_url))
    try:
        assert isinstance(with_grpc.query.transport, GrpcTransport)
        assert isinstance(with_grpc.broadcaster, GrpcBroadcaster)
        assert isinstance(without.query.transport, AbciTransport)
        assert isinstance(without.broadcaster, RpcBroadcaster)
        assert (await with_grpc.query.models_all()) == (await without.query.models_all())
    finally:
        await with_grpc.aclose()
        await without.aclose()


async def test_a_query_at_a_past_height_says_so_on_both_transports(servers: Servers) -> None:
    for client in await both(servers):
        servers.chain.heights.clear()
        try:
            await client.epoch_info(height=77)
            await client.epoch_info()
        finally:
            await client.aclose()
        assert servers.chain.heights == [77, 0]


async def test_a_pruned_height_is_its_own_error_on_rpc_and_both_transports(servers: Servers) -> None:
    """Not a not-found, not a transient failure: retrying will never bring a pruned height back."""
    servers.chain.lowest = 60
    rpc = CometRPC(servers.rpc_url)
    try:
        with pytest.raises(ChainHeightPruned) as pruned_block:
            await rpc.block(50)
        assert (pruned_block.value.height, pruned_block.value.lowest) == (50, 60)
        assert (await rpc.block(60)).height == 60
    finally:
        await rpc.aclose()
    for client in await both(servers):
        try:
            with pytest.raises(ChainHeightPruned) as pruned_state:
                await client.epoch_info(height=50)
            assert (pruned_state.value.height, pruned_state.value.lowest) == (50, None)
            assert "EpochInfo" in str(pruned_state.value)
            await client.epoch_info(height=70)
        finally:
            await client.aclose()
