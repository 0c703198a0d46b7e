"""The daemon's typed inference-path queries (`ChainQuery`, `dapi.chain.store`) against the devnet chain."""

from __future__ import annotations

import base64

import pytest
from inference_msgs import QWQ, finish_msg, make_request, start_msg
from test_devnet_inference_wire import READY, START_URL, signer

from dapi.chain.errors import ChainNotFound
from dapi.chain.query import AbciTransport, ChainQuery, GrpcTransport
from dapi.chain.rpc import CometRPC
from dapi.chain.store import active_participants
from dapi.devnet import SimulatedNetwork


@pytest.fixture
async def devnet(devnet: SimulatedNetwork) -> SimulatedNetwork:
    await devnet.wait_for_height(READY)
    return devnet


@pytest.mark.parametrize("transport", ["grpc", "abci"])
async def test_typed_inference_queries(devnet: SimulatedNetwork, transport: str) -> None:
    genesis = devnet.genesis
    client, ta, executor, other = genesis.clients[0], devnet.own, genesis.peers[0], genesis.peers[1]
    req = make_request(client, ta, executor)
    devnet.pause_blocks()
    try:
        assert devnet.ledger.check_tx(signer(devnet, ta).sign([start_msg(req)]).raw).ok
        assert devnet.ledger.check_tx(signer(devnet, executor).sign([finish_msg(req)]).raw).ok
        await devnet.step()
    finally:
        devnet.resume_blocks()
    rpc = CometRPC(devnet.rpc_url)
    query = ChainQuery(GrpcTransport(devnet.grpc_target) if transport == "grpc" else AbciTransport(rpc))
    try:
        inference = await query.inference(req.inference_id)
        assert (inference.requested_by, inference.executed_by, inference.model) == (
            client.address, executor.address, QWQ)
        with pytest.raises(ChainNotFound):
            await query.inference("nope")
        requester = await query.inference_participant(client.address)
        assert base64.b64decode(requester.pubkey) == client.public_key
        assert requester.balance == client.balance - inference.actual_cost
        assert (await query.participant(executor.address)).inference_url == devnet.executors.url(executor.name)
        drawn = await query.random_executor(QWQ)
        assert drawn.address in {p.address for p in genesis.peers}
        assert [base64.b64decode(k) for k in await query.grantee_pubkeys(ta.address, START_URL)] == [
            ta.signer_key.public_key]
        params = await query.validation_parameters([req.inference_id], other.address)
        assert [d.inference_id for d in params.details] == [req.inference_id]
        assert await query.current_epoch() == 1
        stored = await active_participants(rpc, 1)
        assert {p.index for p in stored.value.participants} >= {executor.address, other.address}
        assert stored.raw == stored.value.SerializeToString()
        with pytest.raises(ChainNotFound):
            await active_participants(rpc, 99)
    finally:
        await query.aclose()
        await rpc.aclose()
