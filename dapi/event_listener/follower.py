"""Every height exactly once, in order: the next height processed is always the last one + 1.

The websocket only says where the chain tip is. When it jumps (a reconnect, a dropped frame, a slow
start), the heights in between are fetched with RPC ``block`` and processed first, so a boundary
block that fell into the gap still gets its transition (the reference silently skips it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dapi.chain.errors import ChainError, ChainUnavailable
from dapi.chain.rpc import CometRPC
from dapi.event_listener.subscription import NewBlock
from dapi.logs import get_logger
from dapi.runtime.backoff import Backoff
from dapi.runtime.tasks import TaskOwner

log = get_logger(__name__)

ProcessBlock = Callable[[NewBlock, bool], Awaitable[None]]  # (block, replayed from RPC)


class BlockFollower:
    """Hands every height to ``process`` exactly once and in order, fetching the heights the websocket skipped.

    Args:
        rpc: where missed blocks are fetched.
        process: awaited with each block and whether it was replayed from RPC (the dispatcher's ``process``).
        backoff_initial: seconds before the first retry of a failed fetch or block; doubles per failure.
        backoff_max: the cap on that retry delay, in seconds.
        max_catch_up: the most missed heights replayed after a gap; older ones are skipped, with an error logged.
        attempts_on_error: how often a block failing with a chain error (other than the chain being unreachable)
            is tried before it is skipped.
    """

    def __init__(
        self,
        rpc: CometRPC,
        process: ProcessBlock,
        *,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        max_catch_up: int = 10_000,
        attempts_on_error: int = 5,
    ) -> None:
        self._rpc = rpc
        self._process = process
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._tasks = TaskOwner("block-follower")
        self._max_catch_up = max_catch_up
        self._attempts_on_error = attempts_on_error
        self._heads: asyncio.Queue[NewBlock] = asyncio.Queue()
        self.last_height: int | None = None
        self.replayed = 0
        self.processed = 0

    async def on_block(self, block: NewBlock) -> None:
        """Called for every NewBlock event; never blocks the websocket reader."""
        self._heads.put_nowait(block)

    def start(self) -> None:
        if "block-follower" not in self._tasks:
            self._tasks.spawn(self._run(), "block-follower")

    async def stop(self) -> None:
        await self._tasks.stop()

    async def _run(self) -> None:
        while True:
            head = await self._heads.get()
            try:
                await self._advance_to(head)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("block follower failed on a head; waiting for the next one", height=head.height)

    async def _advance_to(self, head: NewBlock) -> None:
        last = self.last_height
        if last is not None and head.height <= last:
            return  # a duplicate or an old frame after a reconnect
        if last is not None and head.height - last > self._max_catch_up:
            log.error("too far behind to replay every block; skipping ahead", last=last, head=head.height,
                      skipped=head.height - last - self._max_catch_up)
            last = head.height - self._max_catch_up
        if last is not None:
            for height in range(last + 1, head.height):
                block = await self._fetch(height)
                log.info("replaying a block missed by the websocket", height=height, head=head.height)
                self.replayed += 1
                await self._handle(block, replayed=True)
        await self._handle(head, replayed=False)

    async def _fetch(self, height: int) -> NewBlock:
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        while True:
            try:
                info = await self._rpc.block(height)
                return NewBlock(height=info.height, hash=info.hash)
            except ChainError as exc:
                log.warning("cannot fetch a missed block yet; retrying", height=height, error=str(exc))
                await backoff.wait(exc)

    async def _handle(self, block: NewBlock, *, replayed: bool) -> None:
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        chain_errors = 0
        while True:
            error: Exception
            try:
                await self._process(block, replayed)
                break
            except ChainUnavailable as exc:
                # The chain is down: no later block can be processed either, so wait for it.
                log.warning("chain unavailable while processing a block; retrying it", height=block.height,
                            error=str(exc))
                error = exc
            except ChainError as exc:
                error = exc
                chain_errors += 1
                if chain_errors >= self._attempts_on_error:
                    log.error("giving up on a block after repeated chain errors", height=block.height,
                              error=str(exc))
                    break
                log.warning("chain error while processing a block; retrying it", height=block.height,
                            error=str(exc))
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug must not stall the chain follower: log it loudly and move on to the next height.
                log.exception("processing a block failed; skipped", height=block.height)
                break
            await backoff.wait(error)
        self.last_height = block.height
        self.processed += 1
