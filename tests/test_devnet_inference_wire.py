"""The inference path of the devnet chain over its real ports: the `inference_finished` event on the Tx
websocket stream, and the inference queries giving the same bytes over gRPC and ABCI."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from inference_msgs import QWQ, finish_msg, make_request, start_msg
from websockets.asyncio.client import connect

from dapi.chain.broadcast import RpcBroadcaster
from dapi.chain.errors import ChainNotFound, ChainRejected
from dapi.chain.keys import SigningKey
from dapi.chain.query import AbciTransport, GrpcTransport, QueryTransport
from dapi.chain.rpc import CometRPC
from dapi.chain.store import STORE_KEY_PATH, active_participants_key
from dapi.chain.tx import TxSigner
from dapi.devnet import SimulatedNetwork
from dapi.devnet.genesis import ParticipantSpec
from dapi.gen.inference.inference import activeparticipants_pb2, participant_pb2
from dapi.gen.inference.inference import query_pb2 as q

READY = 55  # epoch 1 effective (switch at 53), Inference phase
Q = "/inference.inference.Query/"
START_URL = "/inference.inference.MsgStartInference"


@pytest.fixture
async def devnet(devnet: SimulatedNetwork) -> SimulatedNetwork:
    await devnet.wait_for_height(READY)
    return devnet


def signer(devnet: SimulatedNetwork, who: ParticipantSpec) -> TxSigner:
    account = devnet.ledger.account(who.signer_address)
    assert account is not None
    return TxSigner(who.signer_key, chain_id=devnet.genesis.chain_id, account_number=account.account_number,
                    account_address=who.address)


async def _subscribe(ws: Any, query: str) -> None:
    await ws.send(json.dumps({"jsonrpc": "2.0", "method": "subscribe", "id": "sub", "params": [query]}))
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("id") == "sub" and "data" not in (frame.get("result") or {}):
            return


async def test_inference_finished_reaches_a_tx_subscriber_with_the_inference_id(devnet: SimulatedNetwork) -> None:
    client, ta, executor = devnet.genesis.clients[0], devnet.own, devnet.genesis.peers[0]
    req = make_request(client, ta, executor)
    rpc = RpcBroadcaster(CometRPC(devnet.rpc_url))
    try:
        async with connect(devnet.websocket_url) as ws:
            await _subscribe(ws, "tm.event='Tx' AND message.module='inference'")
            start = await rpc.broadcast(signer(devnet, ta).sign([start_msg(req)]).raw)
            finish = await rpc.broadcast(signer(devnet, executor).sign([finish_msg(req)]).raw)
            assert (start.code, finish.code) == (0, 0)
            found: dict[str, list[str]] = {}
            async with asyncio.timeout(30):
                while "inference_finished.inference_id" not in found:
                    frame = json.loads(await ws.recv())
                    events = frame["result"]["events"]
                    if events.get("tx.hash") == [finish.hash]:
                        found = events
            assert found["inference_finished.inference_id"] == [req.inference_id]
            assert found["message.module"][-1] == "inference" and found["tm.event"] == ["Tx"]
            included = await rpc.get_tx(finish.hash)
            assert included.code == 0
    finally:
        await rpc.aclose()


async def _both(devnet: SimulatedNetwork) -> list[QueryTransport]:
    return [GrpcTransport(devnet.grpc_target), AbciTransport(CometRPC(devnet.rpc_url))]


async def test_inference_queries_agree_on_both_transports(devnet: SimulatedNetwork) -> None:
    genesis = devnet.genesis
    client, ta, executor, other = genesis.clients[0], devnet.own, genesis.peers[0], genesis.peers[1]
    req = make_request(client, ta, executor)
    devnet.pause_blocks()
    assert devnet.ledger.check_tx(signer(devnet, ta).sign([start_msg(req)]).raw).ok
    assert devnet.ledger.check_tx(signer(devnet, executor).sign([finish_msg(req)]).raw).ok
    await devnet.step()
    stranger = SigningKey(b"\x0e" * 32).address
    requests: list[tuple[str, Message, type[Message]]] = [
        ("Inference", q.QueryGetInferenceRequest(index=req.inference_id), q.QueryGetInferenceResponse),
        ("Participant", q.QueryGetParticipantRequest(index=executor.address), q.QueryGetParticipantResponse),
        ("ParticipantAll", q.QueryAllParticipantRequest(), q.QueryAllParticipantResponse),
        ("InferenceParticipant", q.QueryInferenceParticipantRequest(address=client.address),
         q.QueryInferenceParticipantResponse),
        ("GranteesByMessageType", q.QueryGranteesByMessageTypeRequest(granter_address=ta.address,
                                                                      message_type_url=START_URL),
         q.QueryGranteesByMessageTypeResponse),
        ("GetInferenceValidationParameters", q.QueryGetInferenceValidationParametersRequest(
            ids=[req.inference_id, "missing"], requester=other.address), q.QueryGetInferenceValidationParametersResponse),
        ("GetCurrentEpoch", q.QueryGetCurrentEpochRequest(), q.QueryGetCurrentEpochResponse),
        ("GetModelPerTokenPrice", q.QueryGetModelPerTokenPriceRequest(model_id=QWQ),
         q.QueryGetModelPerTokenPriceResponse),
    ]
    answers: list[list[Message]] = []
    try:
        for transport in await _both(devnet):
            try:
                answers.append([await transport.unary(Q + name, r, t) for name, r, t in requests])
                with pytest.raises(ChainNotFound):
                    await transport.unary(Q + "Inference", q.QueryGetInferenceRequest(index="nope"),
                                          q.QueryGetInferenceResponse)
                with pytest.raises(ChainNotFound):
                    await transport.unary(Q + "Participant", q.QueryGetParticipantRequest(index=stranger),
                                          q.QueryGetParticipantResponse)
                with pytest.raises(ChainNotFound):  # a valid address without an account
                    await transport.unary(Q + "InferenceParticipant",
                                          q.QueryInferenceParticipantRequest(address=stranger),
                                          q.QueryInferenceParticipantResponse)
                with pytest.raises(ChainRejected, match="invalid address"):
                    await transport.unary(Q + "InferenceParticipant",
                                          q.QueryInferenceParticipantRequest(address="gonka1nope"),
                                          q.QueryInferenceParticipantResponse)
                drawn = await transport.unary(Q + "GetRandomExecutor", q.QueryGetRandomExecutorRequest(model=QWQ),
                                              q.QueryGetRandomExecutorResponse)
                assert drawn.executor.address in {p.address for p in genesis.peers}
                assert drawn.executor.inference_url
                with pytest.raises(ChainRejected, match="sub-group"):
                    await transport.unary(Q + "GetRandomExecutor", q.QueryGetRandomExecutorRequest(model="x/y"),
                                          q.QueryGetRandomExecutorResponse)
            finally:
                await transport.aclose()
    finally:
        devnet.resume_blocks()
    assert answers[0] == answers[1]
    (inference, participant, everyone, requester, grantees, validation, epoch, price) = answers[0]
    assert isinstance(inference, q.QueryGetInferenceResponse)
    assert (inference.inference.inference_id, inference.inference.requested_by, inference.inference.executed_by) == (
        req.inference_id, client.address, executor.address)
    assert inference.inference.status == 1 and inference.inference.epoch_id == 1  # FINISHED
    assert isinstance(participant, q.QueryGetParticipantResponse)
    cost = inference.inference.actual_cost
    assert participant.participant.coin_balance == cost > 0
    assert participant.participant.current_epoch_stats.inference_count == 1
    assert participant.participant.status == participant_pb2.ACTIVE
    assert participant.participant.weight > 0
    assert isinstance(everyone, q.QueryAllParticipantResponse)
    addresses = {p.address for p in everyone.participant}
    assert {p.address for p in genesis.participants} | {client.address} == addresses
    assert everyone.block_height == devnet.ledger.height
    assert isinstance(requester, q.QueryInferenceParticipantResponse)
    assert base64.b64decode(requester.pubkey) == client.public_key
    assert requester.balance == client.balance - cost
    assert isinstance(grantees, q.QueryGranteesByMessageTypeResponse)
    assert [(g.address, base64.b64decode(g.pub_key)) for g in grantees.grantees] == [
        (ta.signer_address, ta.signer_key.public_key)]
    assert isinstance(validation, q.QueryGetInferenceValidationParametersResponse)
    assert [d.inference_id for d in validation.details] == [req.inference_id]
    assert validation.details[0].executor_id == executor.address and validation.details[0].model == QWQ
    parent = devnet.ledger.epoch_group(1, "")
    assert parent is not None
    assert validation.validator_power == parent.weight_of(other.address).weight  # type: ignore[union-attr]
    assert validation.parameters.expiration_blocks == 20
    assert validation.parameters.min_validation_average.value == 1  # 0.01
    assert isinstance(epoch, q.QueryGetCurrentEpochResponse) and epoch.epoch == 1
    assert isinstance(price, q.QueryGetModelPerTokenPriceResponse) and not price.found


async def test_active_participants_are_read_by_raw_store_key_over_abci(devnet: SimulatedNetwork) -> None:
    rpc = CometRPC(devnet.rpc_url)
    try:
        current = await AbciTransport(rpc).unary(Q + "GetCurrentEpoch", q.QueryGetCurrentEpochRequest(),
                                                  q.QueryGetCurrentEpochResponse)
        result = await rpc.abci_query(STORE_KEY_PATH, active_participants_key(current.epoch))
        assert result.code == 0
        stored = activeparticipants_pb2.ActiveParticipants.FromString(result.value)
        report = devnet.ledger.report(1)
        assert report is not None
        assert (stored.epoch_id, stored.created_at_block_height, stored.poc_start_block_height) == (
            1, report.formed_at_height, 40)
        assert {p.index for p in stored.participants} == {m.address for m in report.members}
        for p in stored.participants:
            assert p.inference_url and p.weight > 0 and list(p.models) and len(p.ml_nodes) >= len(p.models)
        # As a store answers: an unknown key has no value.
        assert (await rpc.abci_query(STORE_KEY_PATH, active_participants_key(99))).value == b""
        assert (await rpc.abci_query(STORE_KEY_PATH, b"other")).value == b""
    finally:
        await rpc.aclose()
    # A store path is not a gRPC method.
    async with grpc.aio.insecure_channel(devnet.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await channel.unary_unary(STORE_KEY_PATH)(active_participants_key(1))
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
