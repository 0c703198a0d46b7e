"""The devnet's wire servers, through the daemon's own clients on real loopback sockets: gRPC and ABCI
queries agree, txs are checked and included as the chain does it, and the websocket delivers blocks."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import grpc
import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from dapi.chain.broadcast import GrpcBroadcaster, RpcBroadcaster
from dapi.chain.errors import ChainNotFound, ChainRejected
from dapi.chain.keys import SigningKey
from dapi.chain.query import AbciTransport, ChainQuery, GrpcTransport
from dapi.chain.rpc import CometRPC
from dapi.chain.tx import TxSigner, sign_tx
from dapi.devnet import SimulatedNetwork
from dapi.devnet.genesis import ParticipantSpec
from dapi.devnet.ledger import CODESPACE_INFERENCE, CODESPACE_SDK, InferenceCode, SdkCode
from dapi.gen.inference.inference import query_pb2 as q
from dapi.gen.inference.inference import tx_pb2 as itx

P1 = 40  # epoch 1's PoC start; exchange window [41, 48]


async def signer(devnet: SimulatedNetwork, who: ParticipantSpec, query: ChainQuery) -> TxSigner:
    # As the daemon does it: the signer's account number comes from the auth Account query.
    account = await query.account(who.signer_address)
    return TxSigner(who.signer_key, chain_id=devnet.genesis.chain_id, account_number=account.account_number,
                    account_address=who.address)


def poc_batch(who: ParticipantSpec, batch_id: str, node_id: str = "node2", start: int = P1) -> itx.MsgSubmitPocBatch:
    return itx.MsgSubmitPocBatch(creator=who.address, poc_stage_start_block_height=start, batch_id=batch_id,
                                 nonces=[2, 7, 12], dist=[0.25, 0.5, 0.75], node_id=node_id)


async def stop_at(devnet: SimulatedNetwork, height: int) -> None:
    devnet.pause_at(height)
    await devnet.wait_for_height(height)
    assert devnet.ledger.height == height and devnet.paused


# --- queries ---------------------------------------------------------------------------------------


async def test_grpc_and_abci_give_identical_answers(devnet: SimulatedNetwork) -> None:
    await devnet.wait_for_epoch(1)
    devnet.pause_blocks()
    via_grpc = ChainQuery(GrpcTransport(devnet.grpc_target))
    via_abci = ChainQuery(AbciTransport(CometRPC(devnet.rpc_url)))
    peer = devnet.genesis.peers[0]
    try:
        answers = []
        for client in (via_grpc, via_abci):
            parent = await client.epoch_group_data(1, "")
            answers.append([
                await client.epoch_info(),
                await client.params(),
                await client.current_epoch_group_data(),
                parent,
                [await client.epoch_group_data(1, m) for m in parent.sub_group_models],
                await client.models_all(),
                await client.hardware_nodes(peer.address),
                await client.poc_batches_for_stage(P1),
                await client.account(devnet.own.signer_address),
            ])
        assert answers[0] == answers[1]
    finally:
        await via_grpc.aclose()
        await via_abci.aclose()
        devnet.resume_blocks()

    info, params, current, parent, subs, models, hardware, batches, account = answers[0]
    assert info.latest_epoch.index == 1 and info.latest_epoch.poc_start_block_height == P1
    assert params.epoch_params.epoch_length == 40 and params.epoch_params.poc_stage_duration == 6
    assert current == parent and parent.effective_block_height == 53
    assert parent.validation_params.timestamp_expiration == 60  # copied in at the switch
    assert sorted(parent.sub_group_models) == sorted(m.id for m in models) == sorted(m.id for m in devnet.genesis.models)
    for sub in subs:
        assert sub.model_snapshot.id == sub.model_id and sub.epoch_index == 1
        for vw in sub.validation_weights:
            assert vw.ml_nodes and all(len(n.timeslot_allocation) == 2 for n in vw.ml_nodes)
    assert [n.local_id for n in hardware.hardware_nodes] == ["node1", "node2", "node3", "node4"]
    chain_account = devnet.ledger.account(devnet.own.signer_address)
    assert chain_account is not None and account.account_number == chain_account.account_number
    by_participant = {b.participant: b for b in batches}
    peer_batches = by_participant[peer.address]
    assert peer_batches.hex_pub_key == peer.account_key.public_key.hex()
    assert base64.b64decode(peer_batches.pub_key) == peer.account_key.public_key
    assert {b.node_id for b in peer_batches.poc_batch} == {"node1", "node2", "node3", "node4"}
    assert [b.batch_id for b in peer_batches.poc_batch] == sorted(b.batch_id for b in peer_batches.poc_batch)


async def test_epoch_state_at_a_past_height_over_grpc_metadata_and_abci_height(devnet: SimulatedNetwork) -> None:
    await devnet.wait_for_height(P1 + 15)
    path = "/inference.inference.Query/EpochInfo"
    group_path = "/inference.inference.Query/CurrentEpochGroupData"
    rpc = CometRPC(devnet.rpc_url)
    async with grpc.aio.insecure_channel(devnet.grpc_target) as channel:
        async def at(method: str, height: int) -> bytes:
            call = channel.unary_unary(method)(b"", metadata=(("x-cosmos-block-height", str(height)),))
            data: bytes = await call
            headers = await call.initial_metadata()
            assert ("x-cosmos-block-height", str(height)) in list(headers)
            return data

        before = q.QueryEpochInfoResponse.FromString(await at(path, P1 - 1))
        after = q.QueryEpochInfoResponse.FromString(await at(path, P1))
        assert (before.block_height, before.latest_epoch.index) == (P1 - 1, 0)
        assert (after.block_height, after.latest_epoch.index, after.latest_epoch.poc_start_block_height) == (P1, 1, P1)
        abci = await rpc.abci_query(path, b"", height=P1 - 1)
        assert abci.value == await at(path, P1 - 1) and abci.height == P1 - 1
        # The switch to epoch 1 happens at set-new-validators (53).
        old = q.QueryCurrentEpochGroupDataResponse.FromString(await at(group_path, 52))
        new = q.QueryCurrentEpochGroupDataResponse.FromString(await at(group_path, 53))
        assert (old.epoch_group_data.epoch_index, new.epoch_group_data.epoch_index) == (0, 1)
        with pytest.raises(grpc.aio.AioRpcError) as future:
            await at(path, devnet.ledger.height + 1000)
        assert future.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await rpc.aclose()


async def test_missing_groups_are_not_found_on_both_transports(devnet: SimulatedNetwork) -> None:
    for client in (ChainQuery(GrpcTransport(devnet.grpc_target)), ChainQuery(AbciTransport(CometRPC(devnet.rpc_url)))):
        try:
            with pytest.raises(ChainNotFound):
                await client.epoch_group_data(9, "")
            with pytest.raises(ChainNotFound):
                await client.account(SigningKey(b"\x05" * 32).address)  # valid, but no account
            with pytest.raises(ChainRejected):
                await client.account("gonka1notanaddress")
        finally:
            await client.aclose()


async def test_inference_statistics_by_model_in_a_millisecond_window_on_both_transports(
    devnet: SimulatedNetwork,
) -> None:
    await devnet.wait_for_height(2)
    devnet.pause_blocks()
    now_ms = devnet.ledger.now_ns() // 1_000_000
    # Keyed in ms as the chain keys them: 90 s, 30 s and 10 ms ago, and one a day and a second ago.
    for model, tokens, ago_ms in (("m1", 500, 90_000), ("m1", 120, 30_000), ("m2", 7, 10), ("m1", 1, 86_401_000)):
        devnet.ledger.record_inference_stat(model, tokens, time_ms=now_ms - ago_ms)
    try:
        for client in (ChainQuery(GrpcTransport(devnet.grpc_target)),
                       ChainQuery(AbciTransport(CometRPC(devnet.rpc_url)))):
            try:
                # The last minute, as an API node asks for a 60 s utilisation window.
                assert await client.tokens_by_model(now_ms - 60_000, now_ms) == {"m1": 120, "m2": 7}
                # A window in seconds (the reference API node's mistake) matches nothing.
                assert await client.tokens_by_model(now_ms // 1000 - 60, now_ms // 1000) == {}
                # 0 means now, and now minus 24 h for the start: the day-old one is out.
                assert await client.tokens_by_model(0, 0) == {"m1": 620, "m2": 7}
                with pytest.raises(ChainRejected, match="invalid time period"):
                    await client.tokens_by_model(now_ms, now_ms - 1)
            finally:
                await client.aclose()
    finally:
        devnet.resume_blocks()
    params = devnet.genesis.dynamic_pricing
    assert params.utilization_window_duration == 60


# --- transactions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "rpc"])
async def test_a_batch_in_the_window_is_included_and_a_late_one_fails_in_its_block(devnet: SimulatedNetwork,
                                                                                    transport: str) -> None:
    query = ChainQuery(GrpcTransport(devnet.grpc_target))
    broadcaster = GrpcBroadcaster(devnet.grpc_target) if transport == "grpc" else RpcBroadcaster(CometRPC(devnet.rpc_url))
    own = devnet.own
    try:
        tx_signer = await signer(devnet, own, query)
        await stop_at(devnet, P1)
        sent = await broadcaster.broadcast(tx_signer.sign([poc_batch(own, "in-window")]).raw)
        assert (sent.code, sent.log) == (0, "")
        await devnet.step()
        included = await broadcaster.get_tx(sent.hash)
        assert (included.height, included.code) == (P1 + 1, 0)
        [stored] = devnet.ledger.batches(P1, own.address)
        assert (stored.batch_id, stored.node_id) == ("in-window", "node2")
        stored_over_wire = await query.poc_batches_for_stage(P1)
        assert [b.node_id for g in stored_over_wire if g.participant == own.address for b in g.poc_batch] == ["node2"]

        await devnet.step(48 - devnet.ledger.height)  # to the exchange deadline: the next block is too late
        late = await broadcaster.broadcast(tx_signer.sign([poc_batch(own, "late")]).raw)
        assert late.code == 0  # the window is a block rule, not a CheckTx rule
        await devnet.step()
        result = await broadcaster.get_tx(late.hash)
        assert (result.height, result.code, result.codespace) == (49, InferenceCode.POC_TOO_LATE, CODESPACE_INFERENCE)
        assert "too late" in result.log
        assert [b.batch_id for b in devnet.ledger.batches(P1, own.address)] == ["in-window"]
    finally:
        devnet.resume_blocks()
        await broadcaster.aclose()
        await query.aclose()


async def test_bad_txs_get_nonzero_checktx_codes_and_the_node_keeps_going(devnet: SimulatedNetwork) -> None:
    own, peer = devnet.own, devnet.genesis.peers[0]
    query = ChainQuery(GrpcTransport(devnet.grpc_target))
    rpc = RpcBroadcaster(CometRPC(devnet.rpc_url))
    grpc_broadcaster = GrpcBroadcaster(devnet.grpc_target)
    try:
        account = await query.account(own.signer_address)
        wrong_chain = sign_tx(own.signer_key, [poc_batch(own, "x")], chain_id="gonka-mainnet",
                              account_number=account.account_number, unordered=True,
                              timeout_timestamp_ns=devnet.ledger.now_ns() + 30 * 10**9, account_address=own.address)
        for broadcaster in (rpc, grpc_broadcaster):
            bad_sig = await broadcaster.broadcast(wrong_chain.raw)
            assert (bad_sig.code, bad_sig.codespace) == (SdkCode.UNAUTHORIZED, CODESPACE_SDK)
            assert "signature verification failed" in bad_sig.log
            garbage = await broadcaster.broadcast(b"\x12\x34not a tx at all")
            assert garbage.code == SdkCode.TX_DECODE

        ungranted = TxSigner(own.signer_key, chain_id=devnet.genesis.chain_id, account_number=account.account_number,
                             account_address=peer.address)
        refused = await rpc.broadcast(ungranted.sign([poc_batch(peer, "y")]).raw)
        assert (refused.code, refused.codespace) == (SdkCode.UNAUTHORIZED, CODESPACE_SDK)
        assert "authorization not found" in refused.log

        good = (await signer(devnet, own, query)).sign([itx.MsgSubmitSeed(creator=own.address, epoch_index=1,
                                                                         signature="00")])
        assert (await rpc.broadcast(good.raw)).code == 0
        duplicate = await grpc_broadcaster.broadcast(good.raw)
        assert duplicate.code == SdkCode.TX_IN_MEMPOOL_CACHE

        for broadcaster in (rpc, grpc_broadcaster):
            with pytest.raises(ChainNotFound):
                await broadcaster.get_tx(wrong_chain.hash)
        height = devnet.ledger.height
        await devnet.wait_for_height(height + 3)
        assert devnet.ledger.mempool_size == 0
        assert devnet.ledger.tx(good.hash) is not None and devnet.ledger.tx(wrong_chain.hash) is None
    finally:
        await query.aclose()
        await rpc.aclose()
        await grpc_broadcaster.aclose()


async def test_injected_checktx_faults_over_the_wire(devnet: SimulatedNetwork) -> None:
    query = ChainQuery(GrpcTransport(devnet.grpc_target))
    broadcaster = GrpcBroadcaster(devnet.grpc_target)
    own = devnet.own
    try:
        tx_signer = await signer(devnet, own, query)
        devnet.inject_checktx_fault(2)
        devnet.inject_checktx_fault(1, code=SdkCode.INVALID_REQUEST, log="rejected for the test")
        codes = []
        for n in range(4):
            result = await broadcaster.broadcast(tx_signer.sign([itx.MsgSubmitSeed(
                creator=own.address, epoch_index=n + 1, signature="00")]).raw)
            codes.append((result.code, result.log))
        assert codes == [(20, "mempool is full"), (20, "mempool is full"), (18, "rejected for the test"), (0, "")]
    finally:
        await broadcaster.aclose()
        await query.aclose()


# --- CometBFT RPC shapes ---------------------------------------------------------------------------


async def test_status_block_tx_shapes_and_uri_style(devnet: SimulatedNetwork) -> None:
    await devnet.wait_for_height(3)
    devnet.pause_blocks()
    rpc = CometRPC(devnet.rpc_url)
    try:
        status = await rpc.status()
        assert status.network == devnet.genesis.chain_id and status.catching_up is False
        latest = devnet.ledger.latest_block
        assert latest is not None
        assert (status.latest_block_height, status.latest_block_hash) == (latest.height, latest.hash)
        block = await rpc.block(2)
        assert block.hash == devnet.ledger.block(2).hash == block.hash.upper()  # type: ignore[union-attr]
        devnet.set_catching_up(True)
        assert (await rpc.status()).catching_up is True
        devnet.set_catching_up(False)

        async with httpx.AsyncClient(base_url=devnet.rpc_url) as http:
            raw_block = (await http.post("/", json={"jsonrpc": "2.0", "id": 1, "method": "block",
                                                    "params": {"height": "2"}})).json()["result"]
            header = raw_block["block"]["header"]
            assert header["height"] == "2" and header["chain_id"] == devnet.genesis.chain_id
            assert header["last_block_id"]["hash"] == devnet.ledger.block(1).hash  # type: ignore[union-attr]
            assert header["time"].endswith("Z")
            uri = (await http.get("/block", params={"height": "2"})).json()["result"]
            assert uri == raw_block
            uri_status = (await http.get("/status")).json()["result"]
            assert uri_status["sync_info"]["latest_block_height"] == str(latest.height)
            # A peer's hardware diff (sent after block 1) is in block 2: look it up by hash, both styles.
            record = devnet.ledger.block(2).txs[0]  # type: ignore[union-attr]
            by_post = (await http.post("/", json={"jsonrpc": "2.0", "id": 2, "method": "tx", "params": {
                "hash": base64.b64encode(bytes.fromhex(record.hash)).decode(), "prove": False}})).json()["result"]
            assert (by_post["hash"], by_post["height"], by_post["tx_result"]["code"]) == (record.hash, "2", 0)
            by_get = (await http.get("/tx", params={"hash": "0x" + record.hash})).json()["result"]
            assert by_get == by_post
            missing = "AB" * 32
            error = (await http.post("/", json={"jsonrpc": "2.0", "id": 3, "method": "tx", "params": {
                "hash": base64.b64encode(bytes.fromhex(missing)).decode()}})).json()["error"]
            assert f"tx ({missing}) not found" in error["data"]
            future = (await http.post("/", json={"jsonrpc": "2.0", "id": 4, "method": "block",
                                                 "params": {"height": "999"}})).json()["error"]
            assert "must be less than or equal to the current blockchain height" in future["data"]
            unknown = (await http.post("/", json={"jsonrpc": "2.0", "id": 5, "method": "nope"})).json()["error"]
            assert unknown["code"] == -32601
            positional = (await http.post("/", json={"jsonrpc": "2.0", "id": 6, "method": "block",
                                                     "params": ["1"]})).json()["result"]
            assert positional["block"]["header"]["height"] == "1"
    finally:
        devnet.resume_blocks()
        await rpc.aclose()


# --- websocket -------------------------------------------------------------------------------------


async def _subscribe(ws: Any, sub_id: str, query: str) -> dict[str, Any]:
    await ws.send(json.dumps({"jsonrpc": "2.0", "method": "subscribe", "id": sub_id, "params": [query]}))
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("id") == sub_id and "data" not in (frame.get("result") or {}):
            return frame


async def test_a_subscriber_gets_every_height_once_and_in_order(devnet: SimulatedNetwork) -> None:
    heights: list[int] = []
    tx_events: list[dict[str, Any]] = []
    async with connect(devnet.websocket_url) as ws:
        ack = await _subscribe(ws, "1", "tm.event='NewBlock'")
        assert ack["result"] == {}
        await _subscribe(ws, "2", "tm.event='Tx' AND message.module='inference'")
        async with asyncio.timeout(30):
            while len(heights) < 40:
                frame = json.loads(await ws.recv())
                data = frame["result"]["data"]
                if data["type"] == "tendermint/event/Tx":
                    tx_events.append(data["value"]["TxResult"])
                    continue
                assert frame["id"] == "1" and data["type"] == "tendermint/event/NewBlock"
                value = data["value"]
                height_text = value["block"]["header"]["height"]
                assert isinstance(height_text, str)
                height = int(height_text)
                assert value["block_id"]["hash"] == devnet.ledger.block(height).hash  # type: ignore[union-attr]
                assert "result_finalize_block" in value
                heights.append(height)
    assert heights == list(range(heights[0], heights[0] + len(heights)))
    # The peers' hardware diffs (block 2) and PoC batches (block 41) are inference txs inside MsgExec.
    assert tx_events and all(isinstance(e["height"], str) for e in tx_events)


async def test_dropped_websockets_close_and_a_new_subscription_continues(devnet: SimulatedNetwork) -> None:
    async with connect(devnet.websocket_url) as ws:
        await _subscribe(ws, "1", "tm.event='NewBlock'")
        first = json.loads(await ws.recv())
        last_seen = int(first["result"]["data"]["value"]["block"]["header"]["height"])
        assert await devnet.drop_websockets() == 1
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    frame = json.loads(await ws.recv())
                    last_seen = int(frame["result"]["data"]["value"]["block"]["header"]["height"])
    async with connect(devnet.websocket_url) as ws:
        await _subscribe(ws, "1", "tm.event='NewBlock'")
        again = json.loads(await ws.recv())
        assert int(again["result"]["data"]["value"]["block"]["header"]["height"]) > last_seen


async def test_subscription_errors(devnet: SimulatedNetwork) -> None:
    async with connect(devnet.websocket_url) as ws:
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "subscribe", "id": 1, "params": {"query": "tm.event >"}}))
        bad = json.loads(await ws.recv())
        assert bad["id"] == 1 and "failed to parse query" in bad["error"]["data"]
        await _subscribe(ws, "2", "tm.event='NewBlock'")
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "subscribe", "id": "3", "params": ["tm.event='NewBlock'"]}))
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("id") == "3":
                    assert "already subscribed" in frame["error"]["data"]
                    break
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "status", "id": "4"}))
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("id") == "4":
                    assert frame["result"]["node_info"]["network"] == devnet.genesis.chain_id
                    break


async def test_garbage_requests_get_json_rpc_errors(devnet: SimulatedNetwork) -> None:
    async with httpx.AsyncClient(base_url=devnet.rpc_url) as http:
        parse = (await http.post("/", content=b"{not json")).json()
        assert parse["error"]["code"] == -32700
        invalid = (await http.post("/", json={"jsonrpc": "2.0", "id": 1})).json()
        assert invalid["error"]["code"] == -32600
        bad_tx = (await http.post("/", json={"jsonrpc": "2.0", "id": 2, "method": "broadcast_tx_sync",
                                             "params": {"tx": "%%%"}})).json()
        assert bad_tx["error"]["code"] == -32602
        bad_query = (await http.post("/", json={"jsonrpc": "2.0", "id": 3, "method": "abci_query",
                                                "params": {"path": "/inference.inference.Query/Nope", "data": ""}})).json()
        assert bad_query["result"]["response"]["code"] != 0
        batch = (await http.post("/", json=[{"jsonrpc": "2.0", "id": 4, "method": "health"},
                                            {"jsonrpc": "2.0", "id": 5, "method": "status"}])).json()
        assert [frame["id"] for frame in batch] == [4, 5] and batch[0]["result"] == {}
    height = devnet.ledger.height
    await devnet.wait_for_height(height + 2)
