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
from log_capture import LogLines
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from waiting import wait_for
from websockets.asyncio.server import ServerConnection, serve

from dapi.chain.errors import ChainHeightPruned, ChainRejected, ChainUnavailable
from dapi.chain.rpc import CometRPC
from dapi.event_listener.follower import (
    SKIP_CATCH_UP_LIMIT,
    SKIP_PROCESSING_FAILED,
    SKIP_PRUNED,
    BlockFollower,
)
from dapi.event_listener.subscription import (
    NEW_BLOCK_QUERY,
    TX_QUERIES,
    BadEvent,
    ChainSubscription,
    NewBlock,
    parse_new_block,
)
from dapi.metrics import Metrics
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
    lowest: int = 0  # the block store's base: lower heights are pruned


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
        if height < self.lowest:
            # CometBFT 0.38's answer for a pruned height (rpc/core getHeight), with its HTTP status.
            return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "error": {
                "code": -32603, "message": "Internal error",
                "data": f"height {height} is not available, lowest height is {self.lowest}"}}, status_code=500)
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


async def test_a_bug_in_processing_skips_the_block_but_not_the_next_and_says_so(log_lines: LogLines) -> None:
    seen: list[int] = []
    metrics = Metrics()

    async def process(block: NewBlock, replayed: bool) -> None:
        if block.height == 1:
            raise KeyError("bug")
        seen.append(block.height)

    follower = BlockFollower(CometRPC("http://127.0.0.1:9"), process, metrics=metrics)
    follower.start()
    try:
        await follower.on_block(NewBlock(1, block_hash(1)))
        await follower.on_block(NewBlock(2, block_hash(2)))
        await wait_for(lambda: follower.last_height == 2)
    finally:
        await follower.stop()
    assert seen == [2]
    assert [(r.first, r.last, r.reason) for r in follower.skipped] == [(1, 1, SKIP_PROCESSING_FAILED)]
    assert skipped_metric(metrics, SKIP_PROCESSING_FAILED) == 1
    assert log_lines.find(SKIP_LOG, first=1, last=1, reason=SKIP_PROCESSING_FAILED, level="warning")


# --- nothing is dropped silently --------------------------------------------------------------------

SKIP_LOG = "heights skipped: their transitions never ran"


def skipped_metric(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("dapi_blocks_skipped_total", {"reason": reason})
    return value or 0.0


async def test_a_block_is_retried_through_any_number_of_chain_errors_never_skipped() -> None:
    """The reference's port gave up after 5 chain errors and moved on: that block's transitions never ran."""
    attempts: list[int] = []
    answering = asyncio.Event()
    metrics = Metrics()

    async def process(block: NewBlock, replayed: bool) -> None:
        attempts.append(block.height)
        if block.height == 3 and not answering.is_set():
            raise ChainRejected("EpochInfo: code 1: inference is not ready", code=1)

    follower = BlockFollower(CometRPC("http://127.0.0.1:9"), process, backoff_initial=0.001, backoff_max=0.005,
                             metrics=metrics)
    follower.start()
    try:
        await follower.on_block(NewBlock(2, block_hash(2)))
        await follower.on_block(NewBlock(3, block_hash(3)))
        await follower.on_block(NewBlock(4, block_hash(4)))
        await wait_for(lambda: follower.retrying is not None and follower.retrying.attempts >= 12)
        # Stuck on 3, in plain view; 4 waits behind it.
        retrying = follower.retrying
        assert retrying is not None and retrying.height == 3 and "inference is not ready" in retrying.last_error
        assert follower.last_height == 2 and 4 not in attempts
        assert metrics.registry.get_sample_value("dapi_block_retrying_height") == 3
        answering.set()
        await wait_for(lambda: follower.last_height == 4)
    finally:
        await follower.stop()
    assert attempts[0] == 2 and attempts[-2:] == [3, 4] and set(attempts[1:-1]) == {3}
    assert follower.retrying is None and metrics.registry.get_sample_value("dapi_block_retrying_height") == 0
    assert follower.skipped_heights == 0 and not follower.skipped


async def test_pruned_missed_heights_are_skipped_on_record_and_replay_resumes_at_the_lowest_kept(
    node: tuple[ScriptedNode, str, str], log_lines: LogLines
) -> None:
    scripted, _, rpc_url = node
    scripted.lowest = 8  # the chain node keeps blocks from 8 on
    seen: list[tuple[int, bool]] = []
    metrics = Metrics()

    async def process(block: NewBlock, replayed: bool) -> None:
        seen.append((block.height, replayed))

    rpc = CometRPC(rpc_url)
    follower = BlockFollower(rpc, process, metrics=metrics)
    follower.start()
    try:
        await follower.on_block(NewBlock(4, block_hash(4)))
        await follower.on_block(NewBlock(11, block_hash(11)))  # 5..10 missed; 5..7 are gone
        await wait_for(lambda: follower.last_height == 11)
    finally:
        await follower.stop()
        await rpc.aclose()
    assert seen == [(4, False), (8, True), (9, True), (10, True), (11, False)]
    assert scripted.block_calls == [5, 8, 9, 10]  # one question about the pruned range, not one per height
    (skipped,) = follower.skipped
    assert (skipped.first, skipped.last, skipped.heights, skipped.reason) == (5, 7, 3, SKIP_PRUNED)
    assert "lowest height is 8" in skipped.detail
    assert follower.skipped_heights == 3 and skipped_metric(metrics, SKIP_PRUNED) == 3
    (line,) = log_lines.find(SKIP_LOG)
    assert (line["level"], line["first"], line["last"], line["reason"]) == ("warning", 5, 7, SKIP_PRUNED)


async def test_a_missed_height_whose_state_is_pruned_goes_on_from_the_tip(node: tuple[ScriptedNode, str, str]) -> None:
    """The block is still there but the node's state of that height is not: act on the current state."""
    _, _, rpc_url = node
    seen: list[tuple[int, bool]] = []

    async def process(block: NewBlock, replayed: bool) -> None:
        if replayed and block.height < 7:
            raise ChainHeightPruned(f"EpochInfo: failed to load state at height {block.height}", height=block.height)
        seen.append((block.height, replayed))

    rpc = CometRPC(rpc_url)
    follower = BlockFollower(rpc, process)
    follower.start()
    try:
        await follower.on_block(NewBlock(2, block_hash(2)))
        await follower.on_block(NewBlock(9, block_hash(9)))
        await wait_for(lambda: follower.last_height == 9)
    finally:
        await follower.stop()
        await rpc.aclose()
    assert seen == [(2, False), (9, False)]
    assert [(r.first, r.last, r.reason) for r in follower.skipped] == [(3, 8, SKIP_PRUNED)]


async def test_the_catch_up_bound_records_what_it_leaves_out(node: tuple[ScriptedNode, str, str]) -> None:
    _, _, rpc_url = node
    seen: list[int] = []
    metrics = Metrics()

    async def process(block: NewBlock, replayed: bool) -> None:
        seen.append(block.height)

    rpc = CometRPC(rpc_url)
    follower = BlockFollower(rpc, process, max_catch_up=3, metrics=metrics)
    follower.start()
    try:
        await follower.on_block(NewBlock(1, block_hash(1)))
        await follower.on_block(NewBlock(10, block_hash(10)))
        await wait_for(lambda: follower.last_height == 10)
    finally:
        await follower.stop()
        await rpc.aclose()
    assert seen == [1, 7, 8, 9, 10]
    assert [(r.first, r.last, r.reason) for r in follower.skipped] == [(2, 6, SKIP_CATCH_UP_LIMIT)]
    assert skipped_metric(metrics, SKIP_CATCH_UP_LIMIT) == 5


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
