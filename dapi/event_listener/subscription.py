"""CometBFT websocket subscription: NewBlock events in, reconnecting for ever.

The reference exits the process when the websocket cannot be dialled; here a chain node that is down
or restarting only means retrying (capped exponential backoff with jitter, at most ``backoff_max``
apart), and every reconnect subscribes again. Heights that pass while disconnected are not lost:
the block follower fills them in from RPC.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from dapi.logs import get_logger
from dapi.runtime.backoff import Backoff
from dapi.runtime.tasks import TaskOwner

log = get_logger(__name__)

NEW_BLOCK_QUERY = "tm.event='NewBlock'"
# The reference's Tx subscriptions (chain-io.md §1.2); their events go to the ``on_event`` hook.
TX_QUERIES = (
    "tm.event='Tx' AND message.module='inference'",
    "tm.event='Tx' AND message.module='bls'",
    "tm.event='Tx' AND message.action='/cosmos.authz.v1beta1.MsgExec'",
)
MAX_FRAME_BYTES = 256 * 1024 * 1024  # blocks full of PoC batches are large


@dataclass(frozen=True, slots=True)
class NewBlock:
    """A NewBlock event: the block's height and hash (uppercase hex)."""

    height: int
    hash: str  # uppercase hex


class BadEvent(ValueError):
    """A frame that claims to be a NewBlock event but lacks its height or hash."""


def parse_new_block(frame: dict[str, Any]) -> NewBlock | None:
    """The NewBlock of a subscription frame, ``None`` for other frames (acks, Tx events)."""
    result = frame.get("result")
    if not isinstance(result, dict):
        return None
    data = result.get("data")
    if not isinstance(data, dict) or data.get("type") != "tendermint/event/NewBlock":
        return None
    value = data.get("value")
    try:
        height_text = value["block"]["header"]["height"]  # type: ignore[index]
        block_hash = value["block_id"]["hash"]  # type: ignore[index]
    except (KeyError, TypeError) as exc:
        raise BadEvent(f"NewBlock event without block.header.height or block_id.hash: {exc!r}") from None
    if not isinstance(height_text, str) or not isinstance(block_hash, str):
        raise BadEvent("NewBlock height and hash must be JSON strings")
    try:
        height = int(height_text, 10)
    except ValueError:
        raise BadEvent(f"NewBlock height is not a number: {height_text!r}") from None
    return NewBlock(height=height, hash=block_hash.upper())


class ChainSubscription:
    """Owns one websocket task; each NewBlock goes to ``on_block``, other events to ``on_event``.

    Args:
        ws_url: the chain node's websocket URL (``ws://host:port/websocket``).
        on_block: awaited with each NewBlock event (the block follower's ``on_block``).
        on_event: awaited with every other event (those of the Tx subscriptions); None drops them.
        subscribe_txs: subscribe to the reference's Tx queries too, not only to NewBlock.
        backoff_initial: seconds before the first reconnect attempt; doubles per failed attempt.
        backoff_max: the most seconds between two reconnect attempts.
    """

    def __init__(
        self,
        ws_url: str,
        on_block: Callable[[NewBlock], Awaitable[None]],
        *,
        on_event: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        subscribe_txs: bool = True,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
    ) -> None:
        self.ws_url = ws_url
        self._on_block = on_block
        self._on_event = on_event
        self._queries = (NEW_BLOCK_QUERY, *(TX_QUERIES if subscribe_txs else ()))
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._tasks = TaskOwner("chain-websocket")
        self._connection: ClientConnection | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.last_error: str = ""

    def start(self) -> None:
        if "chain-websocket" not in self._tasks:
            self._tasks.spawn(self._run(), "chain-websocket")

    async def stop(self) -> None:
        await self._tasks.stop()

    async def drop_connection(self) -> None:
        """Close the current connection as a network failure would; the task reconnects."""
        if self._connection is not None:
            await self._connection.close()

    async def _run(self) -> None:
        while True:
            try:
                async with connect(self.ws_url, max_size=MAX_FRAME_BYTES, open_timeout=10,
                                   ping_interval=20, ping_timeout=20) as ws:
                    self._connection = ws
                    await self._subscribe(ws)
                    self.connects += 1
                    self.connected.set()
                    self._backoff.succeeded()
                    log.info("chain websocket connected", url=self.ws_url)
                    await self._read(ws)
                # A clean close by the node still means we want more blocks.
                self.last_error = "connection closed by the chain node"
            except asyncio.CancelledError:
                raise
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                self.last_error = repr(exc)
            except Exception as exc:
                self.last_error = repr(exc)
                log.exception("chain websocket task failed; reconnecting")
            finally:
                self._connection = None
                self.connected.clear()
            sleep = self._backoff.failed(self.last_error)
            log.warning("chain websocket down; reconnecting", url=self.ws_url, error=self.last_error,
                        retry_in=round(sleep, 2))
            await asyncio.sleep(sleep)

    async def _subscribe(self, ws: ClientConnection) -> None:
        for number, query in enumerate(self._queries, start=1):
            await ws.send(json.dumps({"jsonrpc": "2.0", "method": "subscribe", "id": str(number),
                                      "params": [query]}))

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            try:
                frame = json.loads(raw)
            except ValueError:
                log.warning("chain websocket sent a frame that is not JSON; skipped")
                continue
            if not isinstance(frame, dict):
                continue
            if frame.get("error"):
                log.error("chain websocket subscription error", error=frame["error"])
                continue
            try:
                block = parse_new_block(frame)
            except BadEvent as exc:
                log.warning("malformed NewBlock event skipped", error=str(exc))
                continue
            if block is not None:
                await self._on_block(block)
            elif self._on_event is not None and isinstance(frame.get("result"), dict) and frame["result"].get("data"):
                await self._on_event(frame["result"])
