"""What the operator dashboard shows, gathered from the daemon's parts, and the short history behind its charts.

``DashboardFeed`` reads the broker, the chain view, the outbox and the metrics; it never changes any of
them. One owned task samples them every ``tick`` seconds, and each dashboard request does too. PoC batch
counts are attributed to the PoC stage running when they changed (a batch is accepted only inside its
stage's exchange window and lands seconds later, so the stage at the moment of the change is the batch's
stage), and every ``point_every`` seconds a point of the last hour's charts is kept. Inference and
validation figures come from the daemon's status (``components["inference"]`` and
``components["validation"]``) when the daemon has them; without them those sections say they are not
available.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dapi.broker.state import EpochState, NodeDiagnostics, NodeResponse
from dapi.chain.outbox_store import DeadLetter
from dapi.chain.view import ChainView
from dapi.metrics import Metrics
from dapi.runtime.tasks import TaskOwner
from dapi.server.admin.board import (
    POC_BATCH,
    inference_totals,
    iso,
    node_row,
    phase_bar,
    poc_stage,
    validation_counts,
    validation_view,
)

__all__ = ["BoardBroker", "BoardOutbox", "DaemonParts", "DashboardFeed"]

KEEP_STAGES = 8
KEEP_EPOCHS = 8
HOUR = 3600.0
DEAD_LETTERS_SHOWN = 20


class BoardBroker(Protocol):
    """What the dashboard reads of the broker."""

    last_command: str | None

    def nodes(self) -> list[NodeResponse]: ...

    def diagnostics(self) -> dict[str, NodeDiagnostics]: ...

    @property
    def epoch_state(self) -> EpochState | None: ...


class BoardOutbox(Protocol):
    """What the dashboard reads of the outbox: counts per state and the dead letters."""

    async def counts(self) -> dict[str, int]: ...

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...


@dataclass
class _Stage:
    accepted: int = 0
    landed: int = 0
    dead: int = 0


@dataclass
class _EpochRecord:
    weight: int | None = None
    claim_sent: bool = False
    claim_landed: bool = False
    validations: dict[str, int] | None = None
    reward: int | None = None


@dataclass
class _Totals:
    """Cumulative counters as last sampled, to turn into per-stage and per-second deltas."""

    accepted: int = 0
    landed: int = 0
    dead: int = 0
    dead_total: int = -1
    claims_landed: int = 0
    requests: int | None = None
    validations: dict[str, int] | None = None
    stage_dead: dict[int, int] = field(default_factory=dict)


class Claims(Protocol):
    """The seed manager, for the last epoch whose rewards were claimed."""

    @property
    def last_claimed_epoch(self) -> int | None: ...


class DaemonParts(Protocol):
    """The daemon as the dashboard sees it: the components it reads, and its status document."""

    @property
    def broker(self) -> BoardBroker | None: ...

    @property
    def view(self) -> ChainView: ...

    @property
    def outbox(self) -> BoardOutbox | None: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def seeds(self) -> Claims | None: ...

    def status(self) -> dict[str, Any]: ...


class DashboardFeed:
    """The dashboard's documents: :meth:`dashboard` (now) and :meth:`history` (charts); :meth:`run` samples.

    Args:
        broker: the ML nodes, their diagnostics and the epoch state.
        view: the chain as of the last processed block.
        outbox: the transaction outbox (None: read-only daemon without one).
        metrics: the daemon's counters (batches, landed txs).
        status: the daemon's ``/v1/status`` document (chain sync, optional inference and validation).
        claimed_epoch: the last epoch whose rewards were claimed (None: none yet).
        tick: seconds between samples; point_every: seconds between kept chart points (default: the class's).
        clock: wall-clock seconds (tests pass a fake one).
    """

    point_every = 10.0  # a class default, so a devnet script can chart seconds-long epochs more finely

    def __init__(self, *, broker: BoardBroker, view: ChainView, outbox: BoardOutbox | None, metrics: Metrics,
                 status: Callable[[], dict[str, Any]], claimed_epoch: Callable[[], int | None] = lambda: None,
                 tick: float = 1.0, point_every: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._broker = broker
        self._view = view
        self._outbox = outbox
        self._metrics = metrics
        self._status = status
        self._claimed_epoch = claimed_epoch
        self.tick = tick
        if point_every is not None:
            self.point_every = point_every
        self._clock = clock
        self._stages: dict[int, _Stage] = {}
        self._epochs: dict[int, _EpochRecord] = {}
        self._points: deque[dict[str, Any]] = deque(maxlen=max(1, int(HOUR / self.point_every)))
        self._totals = _Totals()
        self._last_point: tuple[float, int | None, int] | None = None
        self._dead_letters: list[DeadLetter] = []
        self._dead_batches = 0  # of those, PoC batches (counted when the list is read, not every sample)
        self._sampling = asyncio.Lock()  # the sampler task and page requests both sample; one at a time
        self.samples = 0

    @classmethod
    def started(cls, parts: DaemonParts, owner: TaskOwner) -> DashboardFeed:
        """A feed over a daemon's parts whose sampler runs as a task of ``owner`` (cancelled by its stop)."""
        assert parts.broker is not None, "the broker starts before the admin server"
        feed = cls(broker=parts.broker, view=parts.view, outbox=parts.outbox, metrics=parts.metrics,
                   status=parts.status, claimed_epoch=lambda: parts.seeds.last_claimed_epoch if parts.seeds else None)
        owner.supervise(feed.run, "dashboard-sampler")
        return feed

    async def run(self) -> None:
        """Sample every ``tick`` seconds until cancelled; the first sample is the baseline nothing is counted in."""
        while True:
            await self.sample()
            await asyncio.sleep(self.tick)

    # -- sampling ---------------------------------------------------------------------------------

    async def sample(self, status: Mapping[str, Any] | None = None) -> None:
        """Read the counters once: attribute their changes to the running stage and epoch, keep chart points.

        ``status`` is the daemon's status document when the caller has just built it (else it is built here).
        """
        async with self._sampling:
            await self._sample(self._status() if status is None else status)

    async def _sample(self, status: Mapping[str, Any]) -> None:
        snapshot = self._view.snapshot
        components = status.get("components", {})
        t = self._totals
        first = self.samples == 0
        accepted = self._metrics.batches_accepted_count("generated")
        landed = self._metrics.txs_landed_count("MsgSubmitPocBatch")
        claims_landed = self._metrics.txs_landed_count("MsgClaimRewards")
        # The failure counter moves only after a dead letter is stored: the table is read only when it changed,
        # so sampling never competes with the outbox for its database every second.
        dead_total = self._metrics.tx_failures_count()
        if self._outbox is not None and dead_total != t.dead_total:
            self._dead_letters = await self._outbox.dead_letters(100_000)
            self._dead_batches = sum(1 for d in self._dead_letters if d.type_url == POC_BATCH)
            t.dead_total = dead_total
        dead = self._dead_batches
        # The genesis epoch has no PoC stage to count batches against.
        if snapshot is not None and snapshot.latest_epoch.index > 0 and not first:
            stage = self._stages.setdefault(snapshot.latest_epoch.poc_start_block_height, _Stage())
            stage.accepted += accepted - t.accepted
            stage.landed += landed - t.landed
            stage.dead += dead - t.dead
            self._prune(self._stages, KEEP_STAGES)
        t.accepted, t.landed, t.dead = accepted, landed, dead
        self._sample_epoch(snapshot.latest_epoch.index if snapshot else None, claims_landed, first,
                           components.get("validation"))
        requests = inference_totals(components.get("inference"))
        now = self._clock()
        if self._last_point is None:
            self._last_point = (now, requests, accepted)
        elif now - self._last_point[0] >= self.point_every:
            self._add_point(now, requests, accepted, components.get("inference"))
        self.samples += 1

    def _sample_epoch(self, latest: int | None, claims_landed: int, first: bool,
                      validation: Mapping[str, Any] | None) -> None:
        t = self._totals
        diags = self._broker.diagnostics()
        held = next((d.epoch_data_epoch for d in diags.values() if d.epoch_data_epoch is not None), None)
        if held is not None:
            self._epochs.setdefault(held, _EpochRecord()).weight = sum(
                sum(info.poc_weight for info in r.state.epoch_ml_nodes.values()) for r in self._broker.nodes())
        claimed = self._claimed_epoch()
        if claimed is not None:
            record = self._epochs.setdefault(claimed, _EpochRecord())
            record.claim_sent = True
            if claims_landed > t.claims_landed and not first:
                record.claim_landed = True
        t.claims_landed = claims_landed
        if validation is not None:
            self._sample_validations(validation, latest, first)
        self._prune(self._epochs, KEEP_EPOCHS)

    def _sample_validations(self, validation: Mapping[str, Any], latest: int | None, first: bool) -> None:
        """Per epoch: the daemon's own ``by_epoch`` counts when it has them, else the counts' changes; the claim."""
        t = self._totals
        by_epoch = validation.get("by_epoch")
        if isinstance(by_epoch, Mapping):
            for epoch, counts in by_epoch.items():
                self._epochs.setdefault(int(epoch), _EpochRecord()).validations = validation_counts(counts)
        elif latest is not None:
            now = validation_counts(validation)
            if t.validations is not None and not first:
                record = self._epochs.setdefault(latest, _EpochRecord())
                record.validations = {k: (record.validations or {}).get(k, 0) + now[k] - t.validations.get(k, 0)
                                      for k in now}
            t.validations = now
        claim = validation.get("claim")
        if isinstance(claim, Mapping) and isinstance(claim.get("epoch"), int):
            record = self._epochs.setdefault(claim["epoch"], _EpochRecord())
            record.claim_sent = True
            record.claim_landed = record.claim_landed or claim.get("state") == "landed"
            amount = claim.get("amount")
            record.reward = amount if isinstance(amount, int) else record.reward

    def _add_point(self, now: float, requests: int | None, accepted: int,
                   inference: Mapping[str, Any] | None) -> None:
        assert self._last_point is not None
        then, before, accepted_before = self._last_point
        dt = now - then
        ta = (inference or {}).get("ta") or {}
        self._points.append({
            "t": iso(now),
            "requests_per_s": None if requests is None or before is None else round((requests - before) / dt, 3),
            "p50_ms": ta.get("p50_ms"),
            "p99_ms": ta.get("p99_ms"),
            "batches_per_s": round((accepted - accepted_before) / dt, 3),
        })
        self._last_point = (now, requests, accepted)

    @staticmethod
    def _prune(records: dict[int, Any], keep: int) -> None:
        for key in sorted(records)[:-keep]:
            del records[key]

    # -- documents --------------------------------------------------------------------------------

    async def dashboard(self) -> dict[str, Any]:
        status = self._status()
        await self.sample(status)  # so the per-stage counts agree with the totals shown beside them
        components = status.get("components", {})
        return {
            "generated_at": iso(self._clock()),
            "account_address": status.get("account_address", ""),
            "read_only": bool(status.get("read_only", False)),
            "chain": self._chain(status.get("chain", {})),
            "nodes": self._nodes(),
            "poc": self._poc(),
            "inference": components.get("inference"),
            "validation": validation_view(components.get("validation")),
            "outbox": await self._outbox_view(),
        }

    def _chain(self, chain: Mapping[str, Any]) -> dict[str, Any]:
        snapshot = self._view.snapshot
        state = self._broker.epoch_state
        doc: dict[str, Any] = {
            "height": chain.get("last_height"),
            "seconds_since_last_block": chain.get("seconds_since_last_block"),
            "synced": bool(chain.get("synced")),
            "websocket_connected": bool(chain.get("websocket_connected")),
            "epoch": snapshot.latest_epoch.index if snapshot else None,
            "effective_epoch": state.effective_epoch_index if state else None,
            "phase": str(snapshot.phase) if snapshot else None,
            "phase_bar": phase_bar(snapshot.context, snapshot.height) if snapshot else None,
            "policy": self._policy(),
            "epoch_params": None,
        }
        if snapshot is not None:
            p = snapshot.epoch_params
            doc["epoch_params"] = {
                "epoch_length": p.epoch_length, "poc_stage_duration": p.poc_stage_duration,
                "poc_exchange_duration": p.poc_exchange_duration, "poc_validation_delay": p.poc_validation_delay,
                "poc_validation_duration": p.poc_validation_duration,
                "set_new_validators_delay": p.set_new_validators_delay,
            }
        return doc

    def _policy(self) -> dict[str, Any]:
        """The phase command in force and what it made of the nodes: how many mine, keep serving, stop."""
        decisions: dict[str, int] = {}
        for diag in self._broker.diagnostics().values():
            if diag.decision is not None:
                decisions[diag.decision] = decisions.get(diag.decision, 0) + 1
        return {"command": self._broker.last_command, "decisions": decisions}

    def _nodes(self) -> list[dict[str, Any]]:
        diags = self._broker.diagnostics()
        items = sorted(self._broker.nodes(), key=lambda r: r.node.node_num)
        return [node_row(r, diags.get(r.node.id)) for r in items]

    def _poc(self) -> dict[str, Any]:
        return {
            "accepted": self._metrics.batches_accepted_count("generated"),
            "validated": self._metrics.batches_accepted_count("validated"),
            "refused": self._metrics.batches_refused_count(late=False),
            "late": self._metrics.batches_refused_count(late=True),
            "landed": self._metrics.txs_landed_count("MsgSubmitPocBatch"),
            "dead_lettered": self._totals.dead,
            "stages": [{"stage": h, "accepted": s.accepted, "landed": s.landed, "dead_lettered": s.dead}
                       for h, s in sorted(self._stages.items(), reverse=True)],
        }

    async def _outbox_view(self) -> dict[str, Any] | None:
        if self._outbox is None:
            return None
        counts = await self._outbox.counts()
        recent: Iterable[DeadLetter] = self._dead_letters[-DEAD_LETTERS_SHOWN:]
        return {
            "counts": counts,
            "depth": counts.get("pending", 0) + counts.get("sent", 0),
            "dead_letters": [{"id": d.id, "type": d.type_url.rsplit(".", 1)[-1], "stage": d.stage, "code": d.code,
                              "codespace": d.codespace, "log": d.log[:300], "failed_at": iso(d.failed_at),
                              "poc_stage": poc_stage(d)} for d in reversed(list(recent))],
        }

    def history(self) -> dict[str, Any]:
        return {
            "point_seconds": self.point_every,
            "points": list(self._points),
            "epochs": [{"epoch": e, "weight": r.weight, "claim_sent": r.claim_sent, "claim_landed": r.claim_landed,
                        "reward": r.reward, "validations": r.validations} for e, r in sorted(self._epochs.items())],
        }
