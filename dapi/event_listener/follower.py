"""Every height exactly once, in order: the next height processed is always the last one + 1.

The websocket only says where the chain tip is. When it jumps (a reconnect, a dropped frame, a slow
start), the heights in between are fetched with RPC ``block`` and processed first, so a boundary
block that fell into the gap still gets its transition (the reference silently skips it).

A height is never dropped silently. While the chain answers errors, the same height is retried with
capped backoff for as long as it takes (``retrying`` says which height and why, for ``/v1/status``).
A height is skipped only when it cannot be processed at all, and every skip is recorded in
``skipped``, logged as a warning and counted in ``dapi_blocks_skipped_total``:

* ``pruned``: the chain node no longer keeps the block or the state of a missed height; processing
  goes on from the lowest height it still serves, else from the tip (the current state);
* ``catch_up_limit``: more than ``max_catch_up`` heights were missed; only the last ``max_catch_up``
  are replayed (old boundaries would drive the ML nodes through phases long over);
* ``processing_failed``: processing raised something that is not a chain error (a bug); the next
  height must not stall behind it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dapi.chain.errors import ChainError, ChainHeightPruned
from dapi.chain.rpc import CometRPC
from dapi.event_listener.subscription import NewBlock
from dapi.logs import get_logger
from dapi.metrics import Metrics
from dapi.runtime.backoff import Backoff
from dapi.runtime.tasks import TaskOwner

log = get_logger(__name__)

ProcessBlock = Callable[[NewBlock, bool], Awaitable[None]]  # (block, replayed from RPC)

SKIP_PRUNED = "pruned"
SKIP_CATCH_UP_LIMIT = "catch_up_limit"
SKIP_PROCESSING_FAILED = "processing_failed"


@dataclass(frozen=True, slots=True)
class SkippedRange:
    """Heights ``first`` to ``last`` (inclusive) whose transitions never ran, and why."""

    first: int
    last: int
    reason: str  # one of the SKIP_* kinds
    detail: str  # the error behind it
    at: float  # wall-clock time of the skip

    @property
    def heights(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Retrying:
    """A height the follower keeps retrying: how often it failed, the last error, since when (monotonic)."""

    height: int
    attempts: int
    last_error: str
    since: float


class _SkipTo(Exception):
    """A missed height is pruned on the chain node: ``_advance_to`` records it and goes on past it."""

    def __init__(self, error: ChainHeightPruned) -> None:
        super().__init__(str(error))
        self.error = error


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
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rpc = rpc
        self._process = process
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._tasks = TaskOwner("block-follower")
        self._max_catch_up = max_catch_up
        self._metrics = metrics
        self._clock = clock
        self._heads: asyncio.Queue[NewBlock] = asyncio.Queue()
        self.last_height: int | None = None
        self.replayed = 0
        self.processed = 0
        self.retrying: Retrying | None = None
        self.skipped: deque[SkippedRange] = deque(maxlen=50)  # the most recent skips, oldest first
        self.skipped_heights = 0  # every height skipped since start

    @staticmethod
    def idle_status() -> dict[str, Any]:
        return {"processed": 0, "replayed": 0, "retrying": None, "skipped_heights": 0, "skipped": []}

    def status(self) -> dict[str, Any]:
        """Progress, the height being retried (if any) and the heights skipped: nothing is dropped unseen."""
        retrying = self.retrying
        return {
            "processed": self.processed,
            "replayed": self.replayed,
            "retrying": None if retrying is None else {
                "height": retrying.height,
                "attempts": retrying.attempts,
                "last_error": retrying.last_error,
                "seconds": round(time.monotonic() - retrying.since, 1),
            },
            "skipped_heights": self.skipped_heights,
            "skipped": [
                {"first": r.first, "last": r.last, "heights": r.heights, "reason": r.reason, "error": r.detail,
                 "at": datetime.fromtimestamp(r.at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
                for r in self.skipped
            ],
        }

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
        if last is None:
            await self._handle(head, replayed=False)  # the first block since start: nothing was missed
            return
        height = last + 1
        if head.height - height > self._max_catch_up:
            resume = head.height - self._max_catch_up
            self._skip(height, resume - 1, SKIP_CATCH_UP_LIMIT,
                       f"{head.height - height} heights missed; only the last {self._max_catch_up} are replayed")
            height = resume
        while height < head.height:
            try:
                block = await self._fetch(height)
                log.info("replaying a block missed by the websocket", height=height, head=head.height)
                self.replayed += 1
                await self._handle(block, replayed=True)
                height += 1
            except _SkipTo as skip:
                lowest = skip.error.lowest
                # Replay on from the lowest height the node still keeps; without one, from the tip.
                resume = lowest if lowest is not None and height < lowest <= head.height else head.height
                self._skip(height, resume - 1, SKIP_PRUNED, str(skip.error))
                height = resume
        await self._handle(head, replayed=False)

    async def _fetch(self, height: int) -> NewBlock:
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        while True:
            try:
                info = await self._rpc.block(height)
            except ChainHeightPruned as exc:
                raise _SkipTo(exc) from exc
            except ChainError as exc:
                self._failed(height, exc)
                log.warning("cannot fetch a missed block yet; retrying", height=height, error=str(exc),
                            attempts=backoff.failures + 1)
                await backoff.wait(exc)
                continue
            self._succeeded(height)
            return NewBlock(height=info.height, hash=info.hash)

    async def _handle(self, block: NewBlock, *, replayed: bool) -> None:
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        while True:
            try:
                await self._process(block, replayed)
            except ChainError as exc:
                if replayed and isinstance(exc, ChainHeightPruned):
                    raise _SkipTo(exc) from exc  # the state of that height is gone for good
                # Unavailable, rejected or undecodable alike: the block's transitions must run, so the
                # same height is retried until the chain answers (the next height would have to wait anyway).
                self._failed(block.height, exc)
                log.warning("chain error while processing a block; retrying it", height=block.height,
                            error=str(exc), attempts=backoff.failures + 1)
                await backoff.wait(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug must not stall the chain follower: log it loudly, record the skip, move on.
                log.exception("processing a block failed", height=block.height)
                self._succeeded(block.height)
                self._skip(block.height, block.height, SKIP_PROCESSING_FAILED, repr(exc))
                break
            else:
                self._succeeded(block.height)
                break
        self.last_height = block.height
        self.processed += 1

    # --- what status and metrics show ------------------------------------------------------------

    def _failed(self, height: int, exc: Exception) -> None:
        previous = self.retrying
        if previous is None or previous.height != height:
            self.retrying = Retrying(height, 1, str(exc), self._clock())
        else:
            self.retrying = Retrying(height, previous.attempts + 1, str(exc), previous.since)
        if self._metrics is not None:
            self._metrics.block_retrying_height.set(height)

    def _succeeded(self, height: int) -> None:
        retrying = self.retrying
        if retrying is None:
            return
        self.retrying = None
        if self._metrics is not None:
            self._metrics.block_retrying_height.set(0)
        if retrying.height == height:
            log.info("chain answered again; block goes on", height=height, attempts=retrying.attempts,
                     seconds=round(self._clock() - retrying.since, 1))

    def _skip(self, first: int, last: int, reason: str, detail: str) -> None:
        if last < first:
            return
        skipped = SkippedRange(first, last, reason, detail, time.time())
        self.skipped.append(skipped)
        self.skipped_heights += skipped.heights
        if self._metrics is not None:
            self._metrics.blocks_skipped.labels(reason=reason).inc(skipped.heights)
        log.warning("heights skipped: their transitions never ran", first=first, last=last,
                    heights=skipped.heights, reason=reason, error=detail)
