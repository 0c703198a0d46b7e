"""A simulated GPU's finite capacity: request slots and a token rate.

Units follow DESIGN §6.1: a node's capacity is its chain throughput in tokens per block, served here at
`tokens_per_second = tokens_per_block / block_time` (`tokens_per_second_of`), prompt and completion
tokens alike (the chain measures demand as their sum).

- **Slots.** At most `max_concurrent` requests are served at once (vLLM's `max_num_seqs`). A request is
  in its slot from admission until its last byte, streams included.
- **Waiting room.** Beyond that, up to `max_queue` requests wait, first come first served, for at most
  `queue_timeout` seconds each; then, or at once when the waiting room is full, they fail with
  `CapacityExceeded` (the routes answer 503). This is the sim's choice: a saturated vLLM queues without
  bound, but the clients of a saturated GPU give up, and an API node should see that as a refusal it can
  route around rather than as a request that never ends.
- **Token clock.** Tokens come off one clock at `tokens_per_second`: `produce(n)` books the next n/rate
  seconds of the clock and sleeps until they have passed. Requests in flight book in turns of at most
  `TICK` seconds of work, so the rate is shared among them (they interleave) and the node never produces
  more than `rate * elapsed` tokens, however many requests it holds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

TICK = 0.02  # seconds of GPU work a request books at a time
DEFAULT_MAX_CONCURRENT = 256  # vLLM's default max_num_seqs
DEFAULT_TOKENS_PER_SECOND = 10_000.0
DEFAULT_QUEUE_TIMEOUT = 5.0


class CapacityExceeded(Exception):
    """No slot could be had: the waiting room was full, or the wait timed out."""


def tokens_per_second_of(tokens_per_block: float, block_time: float) -> float:
    """The serving rate of a node whose chain throughput is `tokens_per_block`."""
    if tokens_per_block <= 0 or block_time <= 0:
        raise ValueError("tokens_per_block and block_time must be positive")
    return tokens_per_block / block_time


class NodeCapacity:
    """The slots, waiting room and token clock of one simulated node (see the module docstring).

    Args:
        max_concurrent: requests served at once (at least 1).
        tokens_per_second: the node's token rate (positive).
        queue_timeout: seconds a request may wait for a slot (0: it fails at once when none is free).
        max_queue: requests that may wait at once; None: as many as `max_concurrent`.
    """

    def __init__(
        self,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
        max_queue: int | None = None,
    ) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.admitted = 0  # requests that got a slot
        self.rejected = 0  # requests that did not (CapacityExceeded)
        self.tokens_done = 0  # tokens whose booked time has passed
        self._clock = 0.0  # monotonic time at which the booked work ends
        self.configure(
            max_concurrent=max_concurrent,
            tokens_per_second=tokens_per_second,
            queue_timeout=queue_timeout,
            max_queue=max_queue if max_queue is not None else max_concurrent,
        )

    def configure(
        self,
        *,
        max_concurrent: int | None = None,
        tokens_per_second: float | None = None,
        queue_timeout: float | None = None,
        max_queue: int | None = None,
    ) -> None:
        """Change any of the figures (e.g. to a new epoch's throughput); requests in flight keep going."""
        if max_concurrent is not None:
            if max_concurrent < 1:
                raise ValueError("max_concurrent must be at least 1")
            self.max_concurrent = max_concurrent
        if tokens_per_second is not None:
            if not (tokens_per_second > 0 and math.isfinite(tokens_per_second)):
                raise ValueError("tokens_per_second must be positive and finite")
            self.tokens_per_second = tokens_per_second
        if queue_timeout is not None:
            if queue_timeout < 0:
                raise ValueError("queue_timeout must not be negative")
            self.queue_timeout = queue_timeout
        if max_queue is not None:
            if max_queue < 0:
                raise ValueError("max_queue must not be negative")
            self.max_queue = max_queue
        self._admit_waiters()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    @property
    def tokens_per_turn(self) -> int:
        """How many tokens a request books at once (TICK seconds of work, at least one)."""
        return max(1, int(self.tokens_per_second * TICK))

    def snapshot(self) -> dict[str, float | int]:
        return {
            "max_concurrent": self.max_concurrent,
            "tokens_per_second": self.tokens_per_second,
            "queue_timeout": self.queue_timeout,
            "max_queue": self.max_queue,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "peak_in_flight": self.peak_in_flight,
            "admitted": self.admitted,
            "rejected": self.rejected,
            "tokens_done": self.tokens_done,
        }

    # --- slots ---

    async def acquire(self) -> Slot:
        """A slot, at once or after a wait in the waiting room; CapacityExceeded if none comes."""
        if self.in_flight < self.max_concurrent and not self.waiting:
            return self._take()
        if self.waiting >= self.max_queue or self.queue_timeout == 0:
            self.rejected += 1
            raise CapacityExceeded(
                f"the node is at capacity: {self.in_flight} requests in flight (max {self.max_concurrent}), "
                f"{self.waiting} waiting (max {self.max_queue})"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=self.queue_timeout)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot came just as the wait ended: pass it on
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                self.rejected += 1
                raise CapacityExceeded(
                    f"the node is at capacity: no slot within {self.queue_timeout:g} s "
                    f"({self.in_flight} requests in flight, max {self.max_concurrent})"
                ) from None
            raise
        finally:
            self._drop_done_waiters()
        return Slot(self)

    def _take(self) -> Slot:
        self._count_in()
        return Slot(self)

    def _count_in(self) -> None:
        self.in_flight += 1
        self.admitted += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _release(self) -> None:
        self.in_flight -= 1
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        while self.in_flight < self.max_concurrent and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._count_in()
                waiter.set_result(None)

    def _drop_done_waiters(self) -> None:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()

    # --- the token clock ---

    async def produce(self, tokens: int, sleep: Callable[[float], Awaitable[bool]]) -> bool:
        """Book `tokens` on the clock and wait until they are made; False if `sleep` was cut short.

        `sleep(seconds)` returns False when it ended early (the server is closing); the tokens then
        count as not made.
        """
        if tokens <= 0:
            return True
        now = time.monotonic()
        end = max(now, self._clock) + tokens / self.tokens_per_second
        self._clock = end
        delay = end - now
        if delay > 0 and not await sleep(delay):
            return False
        self.tokens_done += tokens
        return True


class Slot:
    """A request's place in a node's slots; `release()` gives it back (once; later calls do nothing)."""

    def __init__(self, capacity: NodeCapacity) -> None:
        self._capacity: NodeCapacity | None = capacity

    def release(self) -> None:
        capacity, self._capacity = self._capacity, None
        if capacity is not None:
            capacity._release()
