"""Reconciliation: turn each node's intended-vs-current difference into a job for its worker.

A pass (reference/broker.md §5.2-§5.5): cancel jobs whose target is no longer the intent, pick the nodes
that need work, fetch the PoC block hash once if any of them goes to PoC, dispatch. Passes run when a
phase command triggers one (triggers coalesce), on a timer, and when a failed node's backoff expires.

Fixes over the reference: a result counts only if it comes from the job the node's ReconcileInfo names
(job ids, not targets, so an A→B→A flip cannot resurrect a cancelled job's result); a node whose job was
cancelled part-way is marked UNKNOWN because nobody knows what the ML node is doing then; a failing node
is retried with capped exponential backoff (fix 7) instead of at every trigger; InitDto's node_count is
the highest registered NodeNum + 1 and its url is the node's own callback URL (DESIGN.md §4.5). Every PoC
stage an InitDto names is recorded first, so the callback server can tell its batches from forged ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dapi.broker.chain_reader import ChainReader
from dapi.broker.jobs import InferenceUpJob, InitValidateJob, NodeJob, NodeResult, StartPocJob, StopJob
from dapi.broker.pocstages import PocStage, PocStages
from dapi.broker.registry import NodeEntry, NodeRegistry
from dapi.broker.rules import ModelChoice, choose_inference_model, needs_reconcile
from dapi.broker.state import EpochState, NodeStatus, PocStatus, ReconcileInfo
from dapi.chain.errors import ChainError
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.logs import get_logger
from dapi.mlnodeclient import build_init_dto, node_callback_url
from dapi.runtime.backoff import capped_delay

__all__ = ["PassReport", "PocStage", "Reconciler", "desired_choice"]

log = get_logger("dapi.broker.reconciler")


@dataclass(slots=True)
class PassReport:
    """What one pass did, by node id (for logs, metrics and tests)."""

    skipped: str = ""
    cancelled: list[str] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    queue_full: list[str] = field(default_factory=list)
    poc_params_error: str = ""


def desired_choice(entry: NodeEntry, governance: Mapping[str, Model]) -> ModelChoice | None:
    """The model InferenceUp would load on this node now."""
    st = entry.state
    return choose_inference_model(entry.node.config.models, st.epoch_models, st.epoch_ml_nodes, governance)


class Reconciler:
    """Turns each node's intended-vs-current difference into a job for its worker, and job results into status.

    Args:
        registry: the nodes to reconcile, each with its worker.
        chain: where the PoC start block's hash is read when it is not the block being processed.
        epoch_state: returns the broker's epoch state; no pass runs until it is known and synced.
        governance: returns the governance models by id, for choosing the model InferenceUp loads.
        participant_pubkey_hex: the participant's public key in hex, sent as ``InitDto.public_key``.
        poc_callback_url: the base URL of the ML callback server; ``InitDto.url`` is the node's own URL below it.
        stages: where the PoC stages sent in InitDtos are recorded.
        interval: seconds between passes when nothing triggers one.
        backoff_base: seconds before the first retry of a node whose job failed; doubles per further failure.
        backoff_max: the cap on that retry delay, in seconds.
        clock: the monotonic time source, in seconds.
    """

    def __init__(
        self,
        *,
        registry: NodeRegistry,
        chain: ChainReader,
        epoch_state: Callable[[], EpochState | None],
        governance: Callable[[], Mapping[str, Model]],
        participant_pubkey_hex: str,
        poc_callback_url: str,
        stages: PocStages,
        interval: float,
        backoff_base: float,
        backoff_max: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._chain = chain
        self._epoch_state = epoch_state
        self._governance = governance
        self._pubkey = participant_pubkey_hex
        self._callback_url = poc_callback_url
        self._stages = stages
        self._interval = interval
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._clock = clock
        self._job_ids = itertools.count(1)
        self._trigger = asyncio.Event()
        self._poc_hash: PocStage | None = None
        self.passes = 0
        self.stale_results = 0
        self.block_hash_queries = 0

    def trigger(self) -> None:
        """Ask for a pass soon; triggers while one is pending coalesce into it."""
        self._trigger.set()

    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that races a trigger.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wakeup()):
                    await self._trigger.wait()
            self._trigger.clear()
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed")

    def _next_wakeup(self) -> float:
        now = self._clock()
        wake = self._interval
        for entry in self._registry:
            if entry.failures and entry.state.reconcile_info is None and entry.retry_at > now:
                wake = min(wake, entry.retry_at - now)
        return max(wake, 0.001)

    # --- the pass --------------------------------------------------------------------------------

    async def reconcile_once(self) -> PassReport:
        report = PassReport()
        state = self._epoch_state()
        if state is None or not state.synced:
            report.skipped = "epoch state unknown or not synced"
            return report
        self.passes += 1
        self._cancel_outdated(report)

        governance = self._governance()
        now = self._clock()
        candidates: list[NodeEntry] = []
        for entry in self._registry:
            if entry.state.reconcile_info is not None or not self._needs_work(entry, governance):
                continue
            if entry.retry_at > now:
                report.deferred.append(entry.node.id)
                continue
            candidates.append(entry)

        poc: PocStage | None = None
        if any(e.state.intended_status is NodeStatus.POC for e in candidates):
            try:
                poc = await self._poc_params(state)
            except ChainError as exc:
                report.poc_params_error = str(exc)
                log.warning("PoC start block hash not available; PoC jobs wait", error=str(exc))
            if poc is not None:
                await self._stages.record(poc)  # before any InitDto names it: its batches may come back at once
            latest = self._epoch_state()
            if poc is not None and (latest is None or latest.poc_start_block_height != poc.height):
                poc = None  # a new epoch started while we waited; the next pass uses its height

        node_count = self._registry.highest_node_num() + 1
        governance = self._governance()
        for entry in candidates:
            # Live re-check: the await above lets results, removals and phase commands run in between.
            if not self._registry.is_current(entry) or entry.state.reconcile_info is not None:
                continue
            if not self._needs_work(entry, governance):
                continue
            try:
                job = self._build_job(entry, governance, poc, node_count)
            except Exception:
                # One node's bad data must not stop the pass for every other node.
                log.exception("cannot build a job", node_id=entry.node.id)
                continue
            if job is None:
                continue
            st = entry.state
            st.reconcile_info = ReconcileInfo(st.intended_status, st.poc_intended_status, job.job_id)
            if entry.worker.submit(job):
                report.dispatched.append(entry.node.id)
            else:
                st.reconcile_info = None
                report.queue_full.append(entry.node.id)
                log.warning("node worker queue full; job dropped", node_id=entry.node.id, job=repr(job))
        if report.dispatched or report.cancelled:
            log.info(
                "reconcile pass",
                dispatched=report.dispatched,
                cancelled=report.cancelled,
                deferred=report.deferred,
            )
        return report

    def _cancel_outdated(self, report: PassReport) -> None:
        for entry in self._registry:
            st = entry.state
            info = st.reconcile_info
            if info is None or (info.status, info.poc_status) == (st.intended_status, st.poc_intended_status):
                continue
            running = entry.worker.running_job
            waiting = entry.worker.running_call(info.job_id)
            entry.worker.cancel(info.job_id)
            st.reconcile_info = None
            # The job may have stopped the node and not yet started anything else: we no longer know.
            st.set_current(NodeStatus.UNKNOWN, PocStatus.IDLE)
            if waiting is not None and running is not None:
                # A node that never answers is superseded phase after phase, never reaching the job
                # deadline: keep what is known about it instead of a bare UNKNOWN.
                st.failure_reason = f"{type(running).__name__} superseded by a new target: {waiting.describe()}"
                log.warning("node job superseded while its ML call was unanswered", node_id=entry.node.id,
                            job=type(running).__name__, call=waiting.call, url=waiting.url,
                            waited=round(waiting.waited(), 1), new_target=st.intended_status.name,
                            new_poc_target=st.poc_intended_status.value)
            entry.version += 1
            report.cancelled.append(entry.node.id)

    def _needs_work(self, entry: NodeEntry, governance: Mapping[str, Model]) -> bool:
        desired = None
        if entry.state.intended_status is NodeStatus.INFERENCE:
            choice = desired_choice(entry, governance)
            desired = choice.model_id if choice else None
        return needs_reconcile(entry.state, desired)

    async def _poc_params(self, state: EpochState) -> PocStage | None:
        height = state.poc_start_block_height
        if height <= 0:
            return None
        if self._poc_hash is not None and self._poc_hash.height == height:
            return self._poc_hash
        if state.block_height == height and state.block_hash:
            block_hash = state.block_hash
        else:
            self.block_hash_queries += 1
            block_hash = await self._chain.block_hash(height)
        self._poc_hash = PocStage(height, block_hash.upper())
        return self._poc_hash

    def _build_job(
        self, entry: NodeEntry, governance: Mapping[str, Model], poc: PocStage | None, node_count: int
    ) -> NodeJob | None:
        st = entry.state
        job_id = next(self._job_ids)
        if st.intended_status is NodeStatus.STOPPED:
            return StopJob(job_id)
        if st.intended_status is NodeStatus.INFERENCE:
            known = st.served_model if st.current_status is NodeStatus.INFERENCE else None
            return InferenceUpJob(job_id, desired_choice(entry, governance), known_served_model=known)
        if st.intended_status is NodeStatus.POC and poc is not None:
            dto = build_init_dto(
                block_height=poc.height,
                block_hash=poc.block_hash,
                public_key=self._pubkey,
                node_num=entry.node.node_num,
                node_count=node_count,
                callback_url=node_callback_url(self._callback_url, entry.callback_secret),
            )
            if st.poc_intended_status is PocStatus.GENERATING:
                return StartPocJob(job_id, dto, assume_stopped=st.current_status is NodeStatus.STOPPED)
            if st.poc_intended_status is PocStatus.VALIDATING:
                return InitValidateJob(job_id, dto)
        return None

    # --- results ---------------------------------------------------------------------------------

    def apply_result(self, node_id: str, job: NodeJob, result: NodeResult) -> bool:
        """Record a job's result as the node's current status, unless it is stale. Runs on the loop."""
        entry = self._registry.get(node_id)
        info = entry.state.reconcile_info if entry is not None else None
        if entry is None or info is None or info.job_id != job.job_id:
            self.stale_results += 1
            log.debug("stale job result ignored", node_id=node_id, job=repr(job), error=result.error)
            return False
        st = entry.state
        st.reconcile_info = None
        entry.version += 1
        if result.final_status is None:
            st.set_current(NodeStatus.UNKNOWN, PocStatus.IDLE)
            return True
        st.set_current(result.final_status, result.final_poc_status)
        if result.succeeded:
            entry.failures = 0
            entry.retry_at = 0.0
            st.failure_reason = ""
            if result.final_status is NodeStatus.INFERENCE:
                st.served_model = result.served_model
        else:
            st.failure_reason = result.error
            entry.failures += 1
            delay = capped_delay(entry.failures, self._backoff_base, self._backoff_max)
            entry.retry_at = self._clock() + delay
            log.warning(
                "node job failed",
                node_id=node_id,
                job=type(job).__name__,
                error=result.error,
                failures=entry.failures,
                retry_in=round(delay, 3),
            )
            self.trigger()  # so the loop re-plans its wake-up for this node's retry
        return True
