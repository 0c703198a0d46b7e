"""Inference validation as one daemon component: queue, sampler, validator and claim gate, started and stopped together.

It also keeps the numbers ``/v1/status`` (``components.validation``) and ``/metrics`` show, refreshed from
the queue every poll: validations ``selected``, ``pending``, ``sent``, ``landed``, ``failed`` (a value
not above the model's threshold), ``required`` (what the chain's claim check will ask of the latest
epoch with selections), and the last claim's ``{epoch, code, amount, result}``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dapi.chain.query import ChainQuery
from dapi.chain.view import ChainView
from dapi.inference.claim_gate import PAID, ClaimGate, TxLookup
from dapi.inference.validation_queue import ValidationQueue
from dapi.inference.validation_sampler import BlockResults, ValidationSampler
from dapi.inference.validator import InferenceValidator, NodeLocker, ValidationSink
from dapi.logs import get_logger
from dapi.metrics import Metrics
from dapi.poc.seeds import SeedManager
from dapi.runtime.backoff import Backoff
from dapi.runtime.tasks import TaskOwner

__all__ = ["ValidationService"]

log = get_logger(__name__)

COUNT_KEYS = ("selected", "pending", "sent", "landed", "failed", "required")


class ValidationService:
    """Owns the validation pieces and their tasks; :meth:`status` is what ``/v1/status`` shows.

    Args:
        data_dir: where ``validations.sqlite`` lives (beside the outbox).
        rpc: ``block_results`` per height.
        query: the chain queries.
        view: the dispatcher's view of the chain.
        nodes: the broker (node lock).
        outbox: where MsgValidation and the claim go.
        lookup: finds the landed claim tx (the outbox's broadcaster).
        seeds: the SeedManager; its claim is gated from now on.
        account: the participant's address.
        metrics: where the counts go.
        poll_interval: seconds between looks when nothing wakes the loops.
        retry_max: the cap on the delay between two attempts of a validation that could not run.
    """

    def __init__(self, *, data_dir: Path, rpc: BlockResults, query: ChainQuery, view: ChainView, nodes: NodeLocker,
                 outbox: ValidationSink, lookup: TxLookup | None, seeds: SeedManager, account: str,
                 metrics: Metrics | None = None, poll_interval: float = 0.5, retry_max: float = 10.0) -> None:
        self.queue = ValidationQueue(data_dir / "validations.sqlite")
        self._view = view
        self._metrics = metrics
        self._poll = poll_interval
        self.sampler = ValidationSampler(rpc=rpc, query=query, view=view, queue=self.queue, seeds=seeds,
                                         account=account)
        self.validator = InferenceValidator(
            queue=self.queue, query=query, nodes=nodes, outbox=outbox, account=account, poll_interval=poll_interval,
            retry_max=retry_max,
            latest_epoch=lambda: view.snapshot.latest_epoch.index if view.snapshot is not None else None)
        self.gate = ClaimGate(queue=self.queue, view=view, outbox=outbox, lookup=lookup, on_forced=self._forced)
        self.gate.claim = seeds.claim
        seeds.gate = self.gate
        self._seeds = seeds
        self._tasks = TaskOwner("validation")
        self._wake_sampler = asyncio.Event()
        self._last_height: int | None = None
        self.counts: dict[str, int] = dict.fromkeys(COUNT_KEYS, 0)
        self.epoch: int | None = None
        self.by_epoch: dict[int, dict[str, int]] = {}
        self.last_claim: dict[str, Any] | None = None
        self.claims_forced = 0

    async def start(self) -> None:
        await self.queue.open()
        self._tasks.supervise(lambda: self.sampler.run(self._wake_sampler, self._poll), "validation-sampler")
        self.validator.start()
        self._tasks.supervise(self._tick_loop, "validation-claims")

    async def stop(self) -> None:
        await self._tasks.stop()
        await self.validator.stop()
        self._seeds.gate = None
        await self.queue.close()

    def _forced(self) -> None:
        self.claims_forced += 1
        if self._metrics is not None:
            self._metrics.validation_claims_forced.inc()

    async def _tick_loop(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            snapshot = self._view.snapshot
            if snapshot is not None and snapshot.height != self._last_height:
                self._last_height = snapshot.height
                self._wake_sampler.set()
                self.validator.wake.set()  # a new block may have freed a node
            try:
                await self.gate.tick()
                await self.refresh()
                backoff.succeeded()
            except Exception as exc:  # the chain or a bug: keep ticking, the claim must not be forgotten
                delay = backoff.failed(exc)
                log.warning("validation claim tick failed; retrying", error=repr(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            await asyncio.sleep(min(self._poll, 0.1) if snapshot is None else self._poll / 2)

    async def refresh(self) -> None:
        """Re-read the counts from the queue (status and metrics read this cache, never sqlite)."""
        q = self.queue
        totals = await q.run(q.s.counts)
        epoch = await q.run(q.s.latest_epoch)
        by_epoch: dict[int, dict[str, int]] = {}
        if epoch is not None:
            for e in range(max(0, epoch - 2), epoch + 1):
                by_epoch[e] = await q.run(q.s.epoch_counts, e)
        self.epoch, self.by_epoch = epoch, by_epoch
        self.counts = {**totals, "required": by_epoch.get(epoch, {}).get("required", 0) if epoch is not None else 0}
        claim = await q.run(q.s.last_claim)
        self.last_claim = claim.as_json() if claim is not None else None
        if self._metrics is not None:
            for key in COUNT_KEYS:
                self._metrics.validations.labels(kind=key).set(self.counts[key])
            if claim is not None and claim.state in ("landed", "dead"):
                self._metrics.last_claim_amount.set(claim.amount or 0)
                self._metrics.last_claim_paid.set(1 if (claim.amount or 0) > 0 else 0)

    def epoch_report(self, epoch: int) -> dict[str, int]:
        """``{required, sent, landed, failed}`` of one epoch (the devnet's epoch report)."""
        counts = self.by_epoch.get(epoch, {})
        return {k: counts.get(k, 0) for k in ("required", "sent", "landed", "failed")}

    @staticmethod
    def disabled() -> dict[str, Any]:
        """The status of a read-only daemon: nothing is validated nor claimed; the keys stay for dashboards."""
        return {"healthy": False, "enabled": False, **dict.fromkeys(COUNT_KEYS, 0), "claim": None}

    def status(self) -> dict[str, Any]:
        claim = self.last_claim
        return {
            "enabled": True,
            "healthy": self.claims_forced == 0 and not (claim and claim.get("state") == "landed"
                                                         and not claim.get("amount")),
            **{k: int(self.counts.get(k, 0)) for k in COUNT_KEYS},
            "gone": int(self.counts.get("gone", 0)),
            "abandoned": int(self.counts.get("abandoned", 0)),
            "waiting_for_node": int(self.counts.get("waiting_for_node", 0)),
            "epoch": self.epoch,
            "by_epoch": {str(e): {k: c.get(k, 0) for k in ("required", "sent", "landed", "failed")}
                         for e, c in self.by_epoch.items()},
            "scanned_to": self.sampler.scanned,
            "claim": None if claim is None else {
                "epoch": claim["epoch"], "code": claim["code"], "amount": claim["amount"], "result": claim["result"],
                "paid": bool(claim.get("amount")) and claim.get("result") == PAID, "forced": claim["forced"],
                "missing_validations": claim["missing_validations"], "state": claim["state"],
            },
            "claim_waiting": self.gate.waiting,
            "claims_forced": self.claims_forced,
        }
