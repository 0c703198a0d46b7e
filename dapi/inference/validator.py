"""The daemon's inference validator: re-run each queued validation on an own ML node and send MsgValidation.

Runs what the sampler (``validation_sampler``) recorded in the durable queue (``validation_queue``):

1. read the inference (``Inference``); gone from the chain → nothing to validate (``gone``);
2. lock an own ML node serving its model (the broker's rule: INFERENCE intended and current, during PoC
   only POC_SLOT nodes); none free, or every node mining → the validation **waits** and is retried with
   capped backoff. It is never dropped and never sent with a made-up value (the reference sends nothing
   then and loses the epoch's reward, inference.md §4.3 bug);
3. the enforced re-run of §4.2 (``enforced_str`` = the executor's text, ``stream`` false, the executor's
   seed and logprob settings kept) and ``compare_logits``; an unreadable answer is retried the same way;
4. ``MsgValidation`` (§4.3: uuid4 id, the raw answer as payload, its response hash, the similarity,
   ``revalidation`` when the chain asked for one) through the outbox;
5. the tracker follows each MsgValidation's outbox row: landed, or dead-lettered (the chain no longer has
   the inference → ``gone``; any other code → run again later).

A validation whose epoch's claim was already sent (or whose epoch is long over) is ``abandoned``: it
could no longer change what the epoch pays.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import httpx

from dapi.broker.errors import NoNodeAvailable
from dapi.broker.state import Node
from dapi.chain.errors import ChainError, ChainNotFound
from dapi.chain.outbox_store import RowFate
from dapi.chain.query import ChainQuery
from dapi.gen.inference.inference import inference_pb2
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.comparison import (
    ComparisonError,
    compare_logits,
    executor_text,
    logprob_list,
    response_bodies,
    response_hash,
    validation_request,
)
from dapi.inference.request_body import decode_go, go_marshal
from dapi.inference.validation_queue import ValidationQueue, WorkItem
from dapi.logs import get_logger
from dapi.mlnodeclient.models import node_base_url
from dapi.runtime.backoff import capped_delay
from dapi.runtime.tasks import TaskOwner

__all__ = ["INFERENCE_NOT_FOUND", "InferenceValidator", "NodeLocker", "ValidationSink"]

log = get_logger(__name__)

INFERENCE_NOT_FOUND = 1102  # ErrInferenceNotFound: the inference was pruned, nothing left to validate
EPOCHS_KEPT = 2  # validations of epochs older than the latest minus this can no longer matter


class NodeLocker(Protocol):
    """The broker's node lock (an inference slot on an own ML node serving the model)."""

    def lock_node(self, model: str, version: str = "", *, accept_earlier_version: bool = True) -> Node: ...

    def release_node(self, node_id: str, ok: bool = True) -> bool: ...


class ValidationSink(Protocol):
    """The outbox: durable submit, and where each submitted message is now."""

    async def submit(self, msg: Any) -> int: ...

    async def fates(self, row_ids: Iterable[int]) -> dict[int, RowFate]: ...


class InferenceValidator:
    """Runs the queued validations and follows their MsgValidation to the chain.

    Args:
        queue: the durable validation queue.
        query: for the Inference record.
        nodes: the broker (node lock).
        outbox: where MsgValidation goes.
        account: the participant's address (``creator``).
        http: the client for the ML nodes' inference API; None makes one (closed on stop).
        concurrency: validations re-run at once.
        retry_initial: seconds before the first retry of a validation that could not run.
        retry_max: the cap on that delay.
        poll_interval: seconds between looks at the queue and the outbox when nothing wakes the loops.
        latest_epoch: the chain's latest epoch index (to abandon validations of epochs long over); None: never.
        node_wait_retry: the cap on the retry delay of a validation waiting for a free node.
    """

    def __init__(self, *, queue: ValidationQueue, query: ChainQuery, nodes: NodeLocker, outbox: ValidationSink,
                 account: str, http: httpx.AsyncClient | None = None, concurrency: int = 4,
                 retry_initial: float = 0.5, retry_max: float = 10.0, poll_interval: float = 0.5,
                 latest_epoch: Callable[[], int | None] | None = None, node_wait_retry: float = 1.0) -> None:
        self._queue = queue
        self._query = query
        self._nodes = nodes
        self._outbox = outbox
        self._account = account
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=5.0))
        self._concurrency = concurrency
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._node_wait_retry = node_wait_retry
        self.poll_interval = poll_interval
        self._latest_epoch = latest_epoch
        self._tasks = TaskOwner("inference-validator")
        self._runs = TaskOwner("inference-validations")
        self._running: set[tuple[str, bool]] = set()
        self.wake = asyncio.Event()
        self.no_node_waits = 0  # times a validation found no free node and had to wait
        self.last_wait_reason = ""

    def start(self) -> None:
        self._tasks.supervise(self._run_loop, "validation-runner")
        self._tasks.supervise(self._track_loop, "validation-tracker")

    async def stop(self) -> None:
        await self._tasks.stop()
        await self._runs.stop()
        if self._own_http:
            await self._http.aclose()

    # -- running validations ---------------------------------------------------------------------

    async def _run_loop(self) -> None:
        while True:
            self.wake.clear()
            free = self._concurrency - len(self._running)
            if free > 0:
                items = await self._queue.run(self._queue.s.due, time.time(), free, set(self._running))
                for item in items:
                    key = (item.inference_id, item.revalidation)
                    self._running.add(key)
                    task = self._runs.spawn(self.run_one(item), f"validate-{item.inference_id[:8]}")
                    task.add_done_callback(functools.partial(self._done, key))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_interval)

    def _done(self, key: tuple[str, bool], _task: object = None) -> None:
        self._running.discard(key)
        self.wake.set()

    async def _later(self, item: WorkItem, error: str, *, cap: float | None = None) -> None:
        delay = capped_delay(item.attempts + 1, self._retry_initial, self._retry_max if cap is None else cap)
        await self._queue.run(self._queue.s.retry_later, item.inference_id, item.revalidation,
                              time.time() + delay, error)

    async def run_one(self, item: WorkItem) -> None:
        """One attempt at one validation; whatever happens, the row ends in a known state."""
        try:
            await self._attempt(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not lose the validation: it stays queued
            log.exception("validation attempt failed unexpectedly; will retry", inference_id=item.inference_id)
            await self._later(item, repr(exc))

    async def _attempt(self, item: WorkItem) -> None:
        latest = self._latest_epoch() if self._latest_epoch is not None else None
        if latest is not None and item.epoch < latest - EPOCHS_KEPT and not item.revalidation:
            await self._queue.run(self._queue.s.set_state, item.inference_id, False, "abandoned",
                                  f"epoch {item.epoch} is long over")
            return
        # The node first: taking a slot is an in-memory check, so a validation waiting for a node
        # retries often (a free node is used within a block) without asking the chain each time.
        try:
            node = self._nodes.lock_node(item.model)
        except NoNodeAvailable as exc:
            self.no_node_waits += 1
            self.last_wait_reason = str(exc)
            log.info("validation waits for a free node", inference_id=item.inference_id, model=item.model,
                     attempts=item.attempts + 1)
            await self._later(item, str(exc), cap=self._node_wait_retry)
            return
        try:
            inference = await self._query.inference(item.inference_id)
        except ChainNotFound:
            self._nodes.release_node(node.id, True)
            log.info("inference gone from the chain; nothing to validate", inference_id=item.inference_id)
            await self._queue.run(self._queue.s.set_state, item.inference_id, item.revalidation, "gone", "not found")
            return
        except ChainError as exc:
            self._nodes.release_node(node.id, True)
            await self._later(item, f"Inference query: {exc}")
            return
        if inference.status == inference_pb2.STARTED:
            self._nodes.release_node(node.id, True)
            await self._later(item, "inference not finished")
            return
        ok = False
        try:
            value, raw = await self.rerun(node, inference)
            ok = True
        except (ComparisonError, httpx.HTTPError) as exc:
            log.warning("validation re-run failed; will retry", inference_id=item.inference_id, node_id=node.id,
                        error=str(exc) or repr(exc))
            await self._later(item, f"re-run: {exc!r}")
            return
        finally:
            self._nodes.release_node(node.id, ok)
        message = itx.MsgValidation(
            creator=self._account, id=str(uuid.uuid4()), inference_id=item.inference_id,
            response_payload=raw.decode("utf-8", errors="replace"), response_hash=response_hash(decode_go(raw)),
            value=value, revalidation=item.revalidation,
        )
        row = await self._outbox.submit(message)
        await self._queue.run(self._queue.s.mark_sent, item.inference_id, item.revalidation, row, value)
        if item.threshold is not None and value <= item.threshold:
            log.warning("validation sent: the inference FAILED (below the model's threshold)",
                        inference_id=item.inference_id, value=value, threshold=item.threshold,
                        executor=inference.executed_by, revalidation=item.revalidation)
        else:
            log.info("validation sent", inference_id=item.inference_id, value=value,
                     revalidation=item.revalidation, executor=inference.executed_by)

    async def rerun(self, node: Node, inference: inference_pb2.Inference) -> tuple[float, bytes]:
        """§4.2: the enforced re-run on ``node``; the similarity to the original and the raw answer."""
        text = executor_text(inference.response_payload)
        request = validation_request(inference.prompt_payload, text)
        c = node.config
        url = node_base_url(c.host, c.inference_port, c.inference_segment) + "/v1/chat/completions"
        reply = await self._http.post(url, content=go_marshal(request), headers={"Content-Type": "application/json"})
        raw = reply.content
        if reply.status_code >= 500:
            # The reference does not check the status; a node failing is retried rather than judged.
            raise ComparisonError(f"the ML node answered HTTP {reply.status_code}")
        try:
            body = decode_go(raw)
        except ValueError as exc:
            raise ComparisonError(f"the validation answer is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ComparisonError("the validation answer is not a JSON object")
        original = logprob_list(response_bodies(inference.response_payload))
        validation = logprob_list([body])
        if not original or not validation:
            raise ComparisonError("no logprobs to compare")
        return compare_logits(original, validation), raw

    # -- following MsgValidation to the chain ----------------------------------------------------

    async def _track_loop(self) -> None:
        while True:
            await self.track()
            await asyncio.sleep(self.poll_interval)

    async def track(self) -> None:
        rows = await self._queue.run(self._queue.s.in_flight)
        if not rows:
            return
        fates = await self._outbox.fates(row for _, _, row in rows)
        for inference_id, revalidation, row in rows:
            fate = fates[row]
            if fate.state == "landed":
                await self._queue.run(self._queue.s.set_state, inference_id, revalidation, "landed")
            elif fate.state == "dead" and fate.code == INFERENCE_NOT_FOUND:
                await self._queue.run(self._queue.s.set_state, inference_id, revalidation, "gone",
                                      f"code {fate.code}: {fate.log}")
            elif fate.state in ("dead", "unknown"):
                log.warning("MsgValidation did not land; the validation runs again", inference_id=inference_id,
                            code=fate.code, log_text=fate.log)
                await self._queue.run(self._queue.s.retry_later, inference_id, revalidation,
                                      time.time() + self._retry_initial, f"tx {fate.state}: code {fate.code}")
                self.wake.set()
