"""Status polling: ask each ML node what it runs, so the broker's current status follows reality.

reference/broker.md §5.7, with fixes: a node with a job in flight is never polled, and a poll that was
overtaken by a job result (or a new job) is thrown away (fix 7: the reference could mark a node FAILED
while its model was still loading); a node that cannot be reached or answers with an error is marked
FAILED with the reason, so it is isolated from inference routing and the reconciler retries it; for a node
in PoW the PoC sub-status is read too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from dapi.broker.registry import NodeEntry, NodeRegistry
from dapi.broker.state import NodeStatus, PocStatus
from dapi.logs import get_logger
from dapi.mlnodeclient import MLNodeError, MLNodeState, PowState

__all__ = ["StatusPoller", "status_of_ml_state"]

log = get_logger("dapi.broker.poller")

_STATUS_OF = {
    MLNodeState.POW: NodeStatus.POC,
    MLNodeState.INFERENCE: NodeStatus.INFERENCE,
    MLNodeState.TRAIN: NodeStatus.TRAINING,
    MLNodeState.STOPPED: NodeStatus.STOPPED,
}
_POC_OF = {PowState.GENERATING: PocStatus.GENERATING, PowState.VALIDATING: PocStatus.VALIDATING}


def status_of_ml_state(state: MLNodeState) -> NodeStatus:
    return _STATUS_OF.get(state, NodeStatus.UNKNOWN)


class StatusPoller:
    """Asks the ML nodes what they run and records it as their current status, on a timer and on demand.

    Args:
        registry: the nodes to poll; a node with a job in flight is skipped.
        interval: seconds between two polls of one node, and between rounds when nothing triggers one.
        on_change: called after a round that changed some node's status (the broker passes the reconciler's
            trigger).
        concurrency: how many nodes are polled at once.
        clock: the monotonic time source, in seconds.
    """

    def __init__(
        self,
        registry: NodeRegistry,
        *,
        interval: float,
        on_change: Callable[[], None],
        concurrency: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._interval = interval
        self._on_change = on_change
        self._limit = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._trigger = asyncio.Event()
        self.polls = 0

    def trigger(self) -> None:
        self._trigger.set()

    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that races a trigger.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._trigger.wait()
            self._trigger.clear()
            try:
                await self.poll_once()
            except Exception:
                log.exception("status poll failed")

    async def poll_once(self, *, force: bool = False) -> int:
        """Poll every node that is due (UNKNOWN, or not looked at for an interval); returns changes made."""
        now = self._clock()
        due = [
            e
            for e in self._registry
            if e.state.reconcile_info is None
            and (
                force
                or e.polled_at is None
                or e.state.current_status is NodeStatus.UNKNOWN
                or now - e.polled_at >= self._interval
            )
        ]
        if not due:
            return 0
        results = await asyncio.gather(*(self._poll(e) for e in due))
        changed = sum(results)
        if changed:
            self._on_change()
        return changed

    async def _poll(self, entry: NodeEntry) -> bool:
        version = entry.version
        async with self._limit:
            status, poc, reason = await self._observe(entry)
        self.polls += 1
        # Thrown away if a job was dispatched or a result applied meanwhile: those know better.
        if not self._registry.is_current(entry) or entry.state.reconcile_info is not None or entry.version != version:
            return False
        entry.polled_at = self._clock()
        st = entry.state
        if (status, poc) == (st.current_status, st.poc_current_status):
            return False
        log.info(
            "node status observed",
            node_id=entry.node.id,
            previous=st.current_status.name,
            status=status.name,
            reason=reason,
        )
        st.set_current(status, poc)
        if reason:
            st.failure_reason = reason
        entry.version += 1
        return True

    async def _observe(self, entry: NodeEntry) -> tuple[NodeStatus, PocStatus, str]:
        client = entry.client
        try:
            ml_state = await client.node_state()
        except MLNodeError as exc:
            return NodeStatus.FAILED, PocStatus.IDLE, f"state query failed: {exc}"
        status = status_of_ml_state(ml_state)
        if status is NodeStatus.INFERENCE and not await client.is_inference_healthy():
            return NodeStatus.FAILED, PocStatus.IDLE, "inference is not healthy"
        poc = PocStatus.IDLE
        if status is NodeStatus.POC:
            try:
                poc = _POC_OF.get((await client.pow_status()).status, PocStatus.IDLE)
            except MLNodeError:
                poc = PocStatus.IDLE
        return status, poc, ""
