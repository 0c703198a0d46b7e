"""One worker per ML node: runs that node's jobs one at a time and reports each result.

The queue holds at most `capacity` jobs *including the one running*, so whether a submission fits never
depends on whether the worker task has picked up the first job yet (reference/broker.md §8.21). Every
job has a deadline: a job past it fails with the ML node call it was waiting on and for how long, and a
warning; a job can be cancelled while queued or running; a job that raises something other
than what jobs are supposed to raise is logged with its traceback and reported as failed, and the
worker keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from dapi.broker.jobs import NodeJob, NodeResult
from dapi.logs import get_logger
from dapi.mlnodeclient import CallInFlight, MLNodeClient
from dapi.runtime.tasks import TaskOwner

__all__ = ["DEFAULT_CAPACITY", "NodeWorker", "ResultCallback"]

DEFAULT_CAPACITY = 10

log = get_logger("dapi.broker.worker")

ResultCallback = Callable[[str, NodeJob, NodeResult], None]


class NodeWorker:
    """Runs one ML node's jobs one at a time, each under a deadline, and reports every result.

    Args:
        node_id: the node's id, passed back with each result.
        client: the node's ML node client, handed to each job's ``run``.
        on_result: called on the loop with ``(node_id, job, result)`` for every job: done, failed, timed out
            or cancelled.
        job_timeout: seconds a job may run before it is cut off and reported as failed.
        capacity: the most jobs held at once, the running one included; :meth:`submit` refuses beyond it.
    """

    def __init__(
        self,
        node_id: str,
        client: MLNodeClient,
        on_result: ResultCallback,
        *,
        job_timeout: float,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self.node_id = node_id
        self.client = client
        self._on_result = on_result
        self._job_timeout = job_timeout
        self.capacity = capacity
        self._queue: deque[NodeJob] = deque()
        self._wakeup = asyncio.Event()
        self._running: tuple[NodeJob, asyncio.Task[NodeResult]] | None = None
        self._cancelled: set[int] = set()
        self._closed = False
        self._tasks = TaskOwner(f"node-worker-{node_id}")
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = self._tasks.spawn(self._loop(), f"node-worker-{self.node_id}")

    @property
    def pending(self) -> int:
        """Queued jobs plus the one running."""
        return len(self._queue) + (1 if self._running is not None else 0)

    @property
    def running_job(self) -> NodeJob | None:
        return self._running[0] if self._running else None

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, job: NodeJob) -> bool:
        """Queue `job`; False (nothing queued) if the worker is full or shutting down."""
        if self._closed or self.pending >= self.capacity:
            return False
        self._queue.append(job)
        self._wakeup.set()
        return True

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; its (cancelled) result is still reported."""
        if self._running is not None and self._running[0].job_id == job_id:
            self._running[1].cancel()
            return True
        if any(job.job_id == job_id for job in self._queue):
            self._cancelled.add(job_id)
            return True
        return False

    def cancel_all(self) -> None:
        self._cancelled.update(job.job_id for job in self._queue)
        if self._running is not None:
            self._running[1].cancel()

    async def shutdown(self, *, graceful: bool = True) -> None:
        """Stop taking jobs; graceful: run everything queued first, else cancel it. Returns when done."""
        self._closed = True
        if not graceful:
            self.cancel_all()
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    def close(self) -> asyncio.Task[None] | None:
        """Cancel everything and stop without waiting; returns the task to await later, if any."""
        self._closed = True
        self.cancel_all()
        self._wakeup.set()
        return self._task

    # --- the loop --------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            job = self._queue.popleft()
            if job.job_id in self._cancelled:
                self._cancelled.discard(job.job_id)
                self._report(job, NodeResult.cancelled())
                continue
            task = self._tasks.spawn(self._execute(job), f"job-{self.node_id}-{job.job_id}")
            self._running = (job, task)
            try:
                done, _ = await asyncio.wait({task}, timeout=self._job_timeout)
                if done:
                    result = NodeResult.cancelled() if task.cancelled() else task.result()
                else:
                    # Say what the job was stuck in before cancelling it unwinds that call.
                    result = self._past_deadline(job, task)
                    task.cancel()
                    await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                self._running = None
                raise
            self._running = None
            self._report(job, result)

    def running_call(self, job_id: int) -> CallInFlight | None:
        """The ML node call the running job `job_id` is waiting on, if it is running and waiting."""
        if self._running is None or self._running[0].job_id != job_id:
            return None
        return self.client.call_in_flight(self._running[1])

    def _past_deadline(self, job: NodeJob, task: asyncio.Task[NodeResult]) -> NodeResult:
        waiting = self.client.call_in_flight(task)
        reason = f"{type(job).__name__} timed out after {self._job_timeout:g} s (the job deadline)"
        if waiting is not None:
            reason += f": {waiting.describe()}"
        log.warning("node job hit its deadline; the node is marked FAILED", node_id=self.node_id,
                    job=type(job).__name__, deadline=self._job_timeout,
                    call=waiting.call if waiting else None, url=waiting.url if waiting else None,
                    waited=round(waiting.waited(), 1) if waiting else None)
        return NodeResult.failed(reason)

    async def _execute(self, job: NodeJob) -> NodeResult:
        try:
            return await job.run(self.client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("node job crashed", node_id=self.node_id, job=repr(job))
            return NodeResult.failed(f"{type(job).__name__} crashed: {exc!r}")

    def _report(self, job: NodeJob, result: NodeResult) -> None:
        try:
            self._on_result(self.node_id, job, result)
        except Exception:
            log.exception("applying a job result failed", node_id=self.node_id, job=repr(job))

