"""Websocket subscription and in-order block processing with catch-up, against a scripted node.

The node here is a real websocket server and a real JSON-RPC server on loopback whose frames the
test controls exactly (drop a connection, skip heights); the devnet chain is used by the dispatcher's
end-to-end tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from waiting import wait_for
from websockets.asyncio.server import ServerConnection, serve

from dapi.chain.errors import ChainUnavailable
from dapi.chain.rpc import CometRPC
from dapi.event_listener.follower import BlockFollower
from dapi.event_listener.subscription import (
    NEW_BLOCK_QUERY,
    TX_QUERIES,
    BadEvent,
    ChainSubscription,
    NewBlock,
    parse_new_block,
)
from dapi.runtime.serving import start_server


def block_hash(height: int) -> str:
    return f"{height:064X}"


def new_block_frame(height: int) -> dict[str, Any]:
    # CometBFT 0.38's shape: heights are strings, the hash sits in block_id.
    return {
        "jsonrpc": "2.0",
        "id": "1",
        "result": {
            "query": NEW_BLOCK_QUERY,
            "data": {
                "type": "tendermint/event/NewBlock",
                "value": {
                    "block": {"header": {"chain_id": "gonka-testnet", "height": str(height)}, "data": {"txs": []}},
                    "block_id": {"hash": block_hash(height), "parts": {"total": 1, "hash": ""}},
                    "result_finalize_block": {"events": []},
                },
            },
            "events": {"tm.event": ["NewBlock"], "block.height": [str(height)]},
        },
    }


def test_parse_new_block_reads_height_and_hash() -> None:
    assert parse_new_block(new_block_frame(42)) == NewBlock(42, block_hash(42))
    assert parse_new_block({"jsonrpc": "2.0", "id": "1", "result": {}}) is None  # subscribe ack
    tx_event = {"result": {"data": {"type": "tendermint/event/Tx", "value": {}}, "events": {}}}
    assert parse_new_block(tx_event) is None
    broken = new_block_frame(1)
    broken["result"]["data"]["value"]["block"]["header"]["height"] = 7  # a number, not a string
    with pytest.raises(BadEvent):
        parse_new_block(broken)
    del broken["result"]["data"]["value"]["block_id"]
    with pytest.raises(BadEvent):
        parse_new_block(broken)


@dataclass
class ScriptedNode:
    """A websocket endpoint plus JSON-RPC ``block``; ``heads`` are the heights still to announce."""

    heads: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    subscriptions: list[str] = field(default_factory=list)
    block_calls: list[int] = field(default_factory=list)
    rpc_down: int = 0

    async def ws_handler(self, ws: ServerConnection) -> None:
        async for raw in ws:
            request = json.loads(raw)
            self.subscriptions.append(request["params"][0])
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": {}}))
            if len(self.subscriptions) % 4 == 0:
                break
        while True:
            height = await self.heads.get()
            if height is None:  # the script says: drop this connection now
                await ws.close()
                return
            await ws.send(json.dumps(new_block_frame(height)))

    async def rpc(self, request: Request) -> JSONResponse:
        body = await request.json()
        if self.rpc_down:
            self.rpc_down -= 1
            return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32603, "message": "node restarting"}}, status_code=503)
        height = int(body["params"]["height"])
        self.block_calls.append(height)
        return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "result": {
            "block_id": {"hash": block_hash(height)}, "block": {"header": {"height": str(height)}}}})


@pytest.fixture
async def node() -> AsyncIterator[tuple[ScriptedNode, str, str]]:
    scripted = ScriptedNode()
    http = await start_server(Starlette(routes=[Route("/", scripted.rpc, methods=["POST"])]))
    async with serve(scripted.ws_handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        yield scripted, f"ws://127.0.0.1:{port}/websocket", http.url
        for _ in range(4):  # release any handler still waiting for a head, so the server can close
            scripted.heads.put_nowait(None)
    await http.stop()


async def test_every_height_once_and_in_order_across_a_disconnect(node: tuple[ScriptedNode, str, str]) -> None:
    scripted, ws_url, rpc_url = node
    seen: list[tuple[int, str, bool]] = []

    async def process(block: NewBlock, replayed: bool) -> None:
        seen.append((block.height, block.hash, replayed))

    rpc = CometRPC(rpc_url)
    follower = BlockFollower(rpc, process)
    subscription = ChainSubscription(ws_url, follower.on_block, backoff_initial=0.01, backoff_max=0.05)
    follower.start()
    subscription.start()
    try:
        for h in (10, 11, 12):
            scripted.heads.put_nowait(h)
        await wait_for(lambda: len(seen) == 3)
        scripted.heads.put_nowait(None)  # drop the connection
        await wait_for(lambda: subscription.connects == 2)
        # After the reconnect the node is already at 16, and announces 15 late (an old frame).
        for h in (16, 15, 17):
            scripted.heads.put_nowait(h)
        await wait_for(lambda: follower.last_height == 17)
    finally:
        await subscription.stop()
        await follower.stop()
        await rpc.aclose()
    assert [h for h, _, _ in seen] == list(range(10, 18))
    assert all(hash_ == block_hash(h) for h, hash_, _ in seen)
    assert [h for h, _, replayed in seen if replayed] == [13, 14, 15]
    assert scripted.block_calls == [13, 14, 15]
    # Every connection subscribed again to NewBlock and the Tx queries.
    assert scripted.subscriptions == [NEW_BLOCK_QUERY, *TX_QUERIES] * 2


async def test_missed_block_fetch_is_retried_until_rpc_answers(node: tuple[ScriptedNode, str, str]) -> None:
    scripted, _, rpc_url = node
    scripted.rpc_down = 3
    seen: list[int] = []

    async def process(block: NewBlock, replayed: bool) -> None:
        seen.append(block.height)

    rpc = CometRPC(rpc_url)
    follower = BlockFollower(rpc, process, backoff_initial=0.01, backoff_max=0.02)
    follower.start()
    try:
        await follower.on_block(NewBlock(5, block_hash(5)))
        await follower.on_block(NewBlock(8, block_hash(8)))
        await wait_for(lambda: follower.last_height == 8)
    finally:
        await follower.stop()
        await rpc.aclose()
    assert seen == [5, 6, 7, 8]


async def test_block_is_retried_while_the_chain_is_unavailable() -> None:
    attempts: list[int] = []

    async def process(block: NewBlock, replayed: bool) -> None:
        attempts.append(block.height)
        if len(attempts) < 4:
            raise ChainUnavailable("EpochInfo: connection refused")

    follower = BlockFollower(CometRPC("http://127.0.0.1:9"), process, backoff_initial=0.01, backoff_max=0.02)
    follower.start()
    try:
        await follower.on_block(NewBlock(3, block_hash(3)))
        await wait_for(lambda: follower.last_height == 3)
    finally:
        await follower.stop()
    assert attempts == [3, 3, 3, 3] and follower.processed == 1


async def test_a_bug_in_processing_skips_the_block_but_not_the_next() -> None:
    seen: list[int] = []

    async def process(block: NewBlock, replayed: bool) -> None:
        if block.height == 1:
            raise KeyError("bug")
        seen.append(block.height)

    follower = BlockFollower(CometRPC("http://127.0.0.1:9"), process)
    follower.start()
    try:
        await follower.on_block(NewBlock(1, block_hash(1)))
        await follower.on_block(NewBlock(2, block_hash(2)))
        await wait_for(lambda: follower.last_height == 2)
    finally:
        await follower.stop()
    assert seen == [2]


async def test_reconnects_while_the_node_is_unreachable() -> None:
    async def ignore(block: NewBlock) -> None:
        return None

    subscription = ChainSubscription("ws://127.0.0.1:9/websocket", ignore, backoff_initial=0.01, backoff_max=0.02)
    subscription.start()
    try:
        await wait_for(lambda: "Error" in subscription.last_error or "refused" in subscription.last_error.lower())
        assert not subscription.connected.is_set()
    finally:
        await subscription.stop()
