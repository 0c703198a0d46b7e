"""The Broker: the one object the rest of the daemon talks to about ML nodes.

It owns the node registry and changes node state only on the event loop, so a method call *is* a
command (STYLE.md): no command queue, no locks. Phase commands set each node's intent and trigger the
reconciler; one worker per node runs the resulting jobs; the status poller and the hardware sync run on
timers. Every command answers (DESIGN.md §5 fix 1): methods return a result or raise a BrokerError.

It is one piece because it is the broker's whole public surface: each method is a short command that
delegates to the registry, reconciler, epoch sync or hardware sync, and splitting the facade would only
scatter the list of commands the rest of the daemon may give.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from dapi.broker.chain_reader import ChainReader, TxSink
from dapi.broker.decisions import log_decision, node_diagnostics
from dapi.broker.epoch_data import EpochCache, EpochDataSync, EpochSnapshot
from dapi.broker.errors import (
    BrokerError,
    DuplicateNode,
    GovernanceUnavailable,
    InvalidModels,
    InvalidNodeConfig,
    NodeNotFound,
    NoNodeAvailable,
)
from dapi.broker.hardware_sync import HardwareSync
from dapi.broker.jobs import NodeJob, NodeResult
from dapi.broker.nodenums import NodeNumbers
from dapi.broker.pocstages import PocStages
from dapi.broker.poller import StatusPoller
from dapi.broker.reconciler import PassReport, Reconciler, desired_choice
from dapi.broker.registry import NodeEntry, NodeRegistry
from dapi.broker.rules import (
    Target,
    inference_up_target,
    poc_phase_target,
    unavailability_reason,
)
from dapi.broker.state import (
    AdminState,
    EpochState,
    Node,
    NodeDiagnostics,
    NodeResponse,
    NodeState,
    NodeStatus,
    PocStatus,
)
from dapi.broker.worker import NodeWorker
from dapi.chain.epochs import Phase
from dapi.chain.errors import ChainError
from dapi.config import BrokerConfig, NodeConfig
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitHardwareDiff
from dapi.logs import get_logger
from dapi.mlnodeclient import DEFAULT_TIMEOUTS, MLNodeClient, MLNodeTimeouts
from dapi.runtime.tasks import TaskOwner

__all__ = ["Broker", "BrokerMetrics", "CommandResult", "NodeHandle"]

log = get_logger("dapi.broker")

DEFAULT_RECONCILE_INTERVAL = 30.0
DEFAULT_RETRY_BACKOFF_BASE = 1.0


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The answer of a phase command: whether it applied, which nodes' intent changed, and why not."""

    command: str
    accepted: bool
    changed: tuple[str, ...] = ()
    reason: str = ""

    def __bool__(self) -> bool:
        return self.accepted


@dataclass(frozen=True, slots=True)
class NodeHandle:
    """A node and its ML node client (for the PoC batch validation, which calls nodes directly)."""

    node: Node
    client: MLNodeClient


@dataclass(frozen=True, slots=True)
class BrokerMetrics:
    """Counts of the broker at one moment (nodes by status, jobs, passes), for ``/v1/status`` and the gauges."""

    nodes_by_status: dict[str, int]
    jobs_run: int
    jobs_failed: int
    jobs_cancelled: int
    stale_results: int
    reconcile_passes: int
    hardware_diffs_sent: int


class Broker:
    """The daemon's ML nodes and the one place their state changes: registration, phase commands, inference slots.

    Args:
        chain: the chain reads the broker makes (governance models, epoch groups, hardware nodes, block hashes).
        participant_address: the participant's account address; only its entries in an epoch's validation
            weights count, and its hardware record is the one kept in sync.
        participant_pubkey_hex: the participant's public key in hex, sent to ML nodes as ``InitDto.public_key``.
        poc_callback_url: the base URL of the ML callback server; each ML node is given its own URL below it
            to post its PoC batches to.
        settings: the ``broker`` config section (status-poll and hardware-sync intervals, job deadline, retry cap).
        data_dir: the folder where NodeNum assignments, callback secrets and PoC stages persist across restarts.
        tx_sink: where hardware diffs go (the outbox); None runs read-only and sends none.
        reconcile_interval: seconds between reconcile passes when nothing triggers one.
        retry_backoff_base: seconds before the first retry of a node whose job failed; the delay doubles per
            further failure, up to ``settings.retry_backoff_max``.
        mlnode_timeouts: deadlines of the calls to the ML nodes.
        clock: the monotonic time source, in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        chain: ChainReader,
        participant_address: str,
        participant_pubkey_hex: str,
        poc_callback_url: str,
        settings: BrokerConfig,
        data_dir: Path,
        tx_sink: TxSink | None,
        reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL,
        retry_backoff_base: float = DEFAULT_RETRY_BACKOFF_BASE,
        mlnode_timeouts: MLNodeTimeouts = DEFAULT_TIMEOUTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._chain = chain
        self.participant_address = participant_address
        self._settings = settings
        self._timeouts = mlnode_timeouts
        self._registry = NodeRegistry()
        self._nodenums = NodeNumbers(data_dir)
        self._stages = PocStages(data_dir)
        self._epoch_state: EpochState | None = None
        self._cache = EpochCache()
        self._epoch_sync = EpochDataSync(chain, participant_address, self._cache)
        self._reconciler = Reconciler(
            registry=self._registry,
            chain=chain,
            epoch_state=lambda: self._epoch_state,
            governance=lambda: self._cache.governance_by_id,
            participant_pubkey_hex=participant_pubkey_hex,
            poc_callback_url=poc_callback_url,
            stages=self._stages,
            interval=reconcile_interval,
            backoff_base=min(retry_backoff_base, settings.retry_backoff_max),
            backoff_max=settings.retry_backoff_max,
            clock=clock,
        )
        self._poller = StatusPoller(
            self._registry,
            interval=settings.status_poll_interval,
            on_change=self._reconciler.trigger,
            clock=clock,
        )
        self._hardware = HardwareSync(self._registry, chain, participant_address, tx_sink)
        self._reserved_ids: set[str] = set()
        self._tasks = TaskOwner("broker")
        self._retiring: set[asyncio.Task[None]] = set()
        self._jobs_run = 0
        self._jobs_failed = 0
        self._jobs_cancelled = 0
        self._started = False
        self._clock = clock
        self.last_command: str | None = None  # the last phase command that applied, for the decisions shown

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load persisted NodeNums and PoC stages, start the reconciler, the status poller and the hardware sync."""
        if self._started:
            return
        self._started = True
        await self._nodenums.ensure_loaded()
        await self._stages.ensure_loaded()
        if not self._cache.governance_models():
            try:
                await self._epoch_sync.refresh_governance()
            except ChainError as exc:
                log.warning("governance models not loaded at start; retried with the hardware sync", error=str(exc))
        self._tasks.spawn(self._reconciler.run(), "broker-reconciler")
        self._tasks.spawn(self._poller.run(), "broker-status-poller")
        self._tasks.spawn(self._chain_sync_loop(), "broker-hardware-sync")

    async def stop(self) -> None:
        """Stop the loops, cancel every node's work, close what the broker owns."""
        await self._tasks.stop()
        workers = [t for e in self._registry if (t := e.worker.close()) is not None]
        await asyncio.gather(*workers, *self._retiring, return_exceptions=True)
        for entry in self._registry:
            await entry.client.aclose()
        self._started = False

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- registry --------------------------------------------------------------------------------

    async def register(self, config: NodeConfig) -> Node:
        """Register one node; raises DuplicateNode, InvalidModels, InvalidNodeConfig or GovernanceUnavailable."""
        (result,) = await self.register_many([config])
        if isinstance(result, BrokerError):
            raise result
        return result

    async def register_many(self, configs: Sequence[NodeConfig]) -> list[Node | BrokerError]:
        """Register several nodes with one governance query; NodeNums follow the given order.

        Each item of the answer is the registered Node or the error that rejected that config; a
        rejected config consumes no NodeNum.
        """
        await self._nodenums.ensure_loaded()
        results: list[Node | BrokerError | None] = [None] * len(configs)
        claimed: set[str] = set()
        todo: list[int] = []
        for i, config in enumerate(configs):
            if config.id in self._registry or config.id in self._reserved_ids or config.id in claimed:
                results[i] = DuplicateNode(config.id)
            else:
                claimed.add(config.id)
                todo.append(i)
        # Reserved across the await so a concurrent registration of the same id is a duplicate too.
        self._reserved_ids |= claimed
        try:
            if todo:
                await self._register_validated(configs, todo, results)
        finally:
            self._reserved_ids -= claimed
        return [r if r is not None else BrokerError("not registered") for r in results]

    async def _register_validated(
        self, configs: Sequence[NodeConfig], todo: list[int], results: list[Node | BrokerError | None]
    ) -> None:
        try:
            governance = await self._chain.models_all()
        except ChainError as exc:
            for i in todo:
                results[i] = GovernanceUnavailable(configs[i].id, exc)
            return
        self._epoch_sync.set_governance(governance)
        governance_ids = {m.id for m in governance}
        for i in todo:
            config = configs[i]
            bad = [m for m in config.models if m not in governance_ids]
            if bad:
                results[i] = InvalidModels(config.id, bad)
                continue
            try:
                results[i] = self._add_node(config)
            except InvalidNodeConfig as exc:
                results[i] = exc
        await self._save_nodenums("NodeNums and callback secrets")

    async def _save_nodenums(self, what: str) -> None:
        try:
            await self._nodenums.save()
        except OSError as exc:
            # What is in memory holds until a restart, which would not know it. Say so loudly.
            log.error(f"{what} not persisted", path=str(self._nodenums.path), error=str(exc))

    def _add_node(self, config: NodeConfig) -> Node:
        config = config.model_copy(deep=True)
        try:
            client = MLNodeClient.for_node(
                config.host,
                poc_port=config.poc_port,
                inference_port=config.inference_port,
                poc_segment=config.poc_segment,
                inference_segment=config.inference_segment,
                # A pool per node: one pool shared by a thousand nodes makes every request scan them all.
                timeouts=self._timeouts,
            )
        except ValueError as exc:
            raise InvalidNodeConfig(config.id, str(exc)) from exc
        node_num, secret = self._nodenums.assign(config.id)
        node = Node(config, node_num)
        latest = self._epoch_state.latest_epoch_index if self._epoch_state else 0
        state = NodeState(admin_state=AdminState(enabled=True, epoch=latest))
        data = self._epoch_sync.node_data(config.id)
        if data is not None:
            state.epoch_models = dict(data.models)
            state.epoch_ml_nodes = dict(data.ml_nodes)
        worker = NodeWorker(config.id, client, self._on_job_result, job_timeout=self._settings.job_timeout)
        self._registry.add(NodeEntry(node, state, client, worker, callback_secret=secret))
        worker.start()
        self._poller.trigger()
        log.info("node registered", node_id=config.id, node_num=node.node_num, poc_url=client.poc_url)
        return node

    async def remove(self, node_id: str) -> bool:
        """Unregister a node (its callback URL stops working); its jobs are cancelled in the background."""
        entry = self._registry.pop(node_id)
        if entry is None:
            return False
        self._nodenums.revoke_secret(node_id)
        await self._save_nodenums("revoked callback secret")
        task = entry.worker.close()
        if task is not None and not task.done():
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        await entry.client.aclose()
        log.info("node removed", node_id=node_id)
        return True

    def set_admin_state(self, node_id: str, enabled: bool) -> AdminState:
        """Record an operator's enable/disable at the latest epoch; applied by the next phase command."""
        entry = self._registry.get(node_id)
        if entry is None:
            raise NodeNotFound(node_id)
        epoch = self._epoch_state.latest_epoch_index if self._epoch_state else 0
        entry.state.admin_state = AdminState(enabled=enabled, epoch=epoch)
        log.info("node admin state set", node_id=node_id, enabled=enabled, epoch=epoch)
        return AdminState(enabled, epoch)

    def nodes(self) -> list[NodeResponse]:
        """Snapshots of every node in registration order (safe to keep and serialize)."""
        return [NodeResponse(e.node, e.state.copy()) for e in self._registry]

    def node(self, node_id: str) -> NodeResponse | None:
        entry = self._registry.get(node_id)
        return NodeResponse(entry.node, entry.state.copy()) if entry else None

    def node_by_num(self, node_num: int) -> Node | None:
        entry = self._registry.by_num(node_num)
        return entry.node if entry else None

    def callback_owner(self, secret: str) -> str | None:
        """The id of the node whose own callback URL carries ``secret`` (None: unknown, removed or dropped).

        Until :meth:`forget_unregistered_secrets`, a node known from ``data_dir`` counts before it is
        registered again: a node generating across a restart is heard while the daemon waits for the chain.
        """
        node_id = self._nodenums.owner_of(secret)
        return node_id if node_id in self._registry or not self._nodenums.pruned else None

    async def forget_unregistered_secrets(self) -> list[str]:
        """Once the configured nodes are registered, revoke the URLs of ids that are not (dropped or rejected)."""
        await self._nodenums.ensure_loaded()
        dropped = self._nodenums.revoke_all_but({e.node.id for e in self._registry} | self._reserved_ids)
        await self._save_nodenums("revoked callback secrets")
        return dropped

    def poc_stage_hash(self, height: int) -> str | None:
        """The start block hash of the PoC stage at ``height``, if the ML nodes were initialised for it."""
        return self._stages.hash_of(height)

    # --- epoch -----------------------------------------------------------------------------------

    @property
    def epoch_state(self) -> EpochState | None:
        return self._epoch_state

    def set_epoch_state(self, state: EpochState) -> None:
        self._epoch_state = state

    @property
    def epoch_cache(self) -> EpochCache:
        return self._cache

    async def update_epoch_data(self) -> bool:
        """UpdateNodeWithEpochData for the current epoch state; True if the nodes got new epoch data.

        Raises ChainError if the chain could not be read; nothing is recorded then, so the next call
        (the next block) tries again.
        """
        state = self._epoch_state
        if state is None or not state.synced:
            return False
        snapshot = await self._epoch_sync.sync(state)
        if snapshot is None:
            return False
        self._apply_epoch_snapshot(snapshot)
        return True

    def _apply_epoch_snapshot(self, snapshot: EpochSnapshot) -> None:
        for entry in self._registry:
            data = snapshot.nodes.get(entry.node.id)
            entry.state.epoch_models = dict(data.models) if data else {}
            entry.state.epoch_ml_nodes = dict(data.ml_nodes) if data else {}
        log.info(
            "epoch data applied",
            epoch=snapshot.epoch_index,
            models=[m.id for m in snapshot.models],
            own_nodes=sorted(snapshot.nodes),
        )
        self._reconciler.trigger()

    # --- phase commands --------------------------------------------------------------------------

    def start_poc(self) -> CommandResult:
        """PoC generation: disabled → STOPPED, POC_SLOT → INFERENCE, else POC/GENERATING."""
        return self._phase_command(
            "StartPoc",
            {Phase.POC_GENERATE},
            lambda st, epoch, phase: poc_phase_target(st, epoch, phase, PocStatus.GENERATING),
        )

    def init_validate(self) -> CommandResult:
        """PoC validation: disabled → STOPPED, POC_SLOT → INFERENCE, else POC/VALIDATING."""
        return self._phase_command(
            "InitValidate",
            {Phase.POC_VALIDATE, Phase.POC_GENERATE_WIND_DOWN},
            lambda st, epoch, phase: poc_phase_target(st, epoch, phase, PocStatus.VALIDATING),
        )

    def inference_up_all(self) -> CommandResult:
        """Inference: not operational → STOPPED, TRAINING left alone, else INFERENCE."""
        return self._phase_command(
            "InferenceUpAll", {Phase.INFERENCE, Phase.POC_VALIDATE_WIND_DOWN}, inference_up_target
        )

    def _phase_command(
        self, name: str, phases: Collection[Phase], target_of: Callable[[NodeState, int, Phase], Target]
    ) -> CommandResult:
        state = self._epoch_state
        if state is None or not state.synced:
            return CommandResult(name, False, reason="epoch state unknown or chain not synced")
        if state.phase not in phases:
            return CommandResult(name, False, reason=f"{name} does not apply in phase {state.phase}")
        self.last_command = name
        changed: list[str] = []
        for entry in self._registry:
            st = entry.state
            target = target_of(st, state.latest_epoch_index, state.phase)
            log_decision(entry, name, state.latest_epoch_index, target, self._cache.governance_by_id)
            if (target.status, target.poc_status) == (st.intended_status, st.poc_intended_status):
                continue
            st.intended_status = target.status
            st.poc_intended_status = target.poc_status
            # A new target deserves a prompt first attempt, whatever the old one's failures were.
            entry.failures = 0
            entry.retry_at = 0.0
            changed.append(entry.node.id)
        self._reconciler.trigger()
        return CommandResult(name, True, tuple(changed), "" if changed else "nothing to change")

    # --- inference routing -----------------------------------------------------------------------

    def lock_node(self, model: str, version: str = "", *, accept_earlier_version: bool = True) -> Node:
        """Take one inference slot on the least busy node serving `model`; release it with release_node.

        With `accept_earlier_version`, a request for a version no node has falls back to any version
        (the reference's meaning). Raises NoNodeAvailable.
        """
        entry = self._least_busy(model, version)
        if entry is None and version and accept_earlier_version:
            entry = self._least_busy(model, "")
        if entry is None:
            raise NoNodeAvailable(model, version)
        entry.state.lock_count += 1
        return entry.node

    def release_node(self, node_id: str, ok: bool = True) -> bool:
        """Give back a slot taken by lock_node; False if the node is gone."""
        entry = self._registry.get(node_id)
        if entry is None:
            return False
        entry.state.lock_count = max(0, entry.state.lock_count - 1)
        if not ok:
            log.info("inference on node failed", node_id=node_id)
        return True

    @contextlib.asynccontextmanager
    async def locked_node(self, model: str, version: str = "") -> AsyncIterator[Node]:
        node = self.lock_node(model, version)
        ok = False
        try:
            yield node
            ok = True
        finally:
            self.release_node(node.id, ok)

    def _least_busy(self, model: str, version: str) -> NodeEntry | None:
        state = self._epoch_state
        if state is None or not state.synced:
            return None
        governance = self._cache.governance_by_id
        best: NodeEntry | None = None
        for entry in self._registry:
            served = entry.state.served_model
            if served is None:
                choice = desired_choice(entry, governance)
                served = choice.model_id if choice else None
            reason = unavailability_reason(
                entry.node.config,
                entry.state,
                model=model,
                version=version,
                latest_epoch=state.latest_epoch_index,
                phase=state.phase,
                served_model=served,
            )
            if reason is None and (best is None or entry.state.lock_count < best.state.lock_count):
                best = entry
        return best

    # --- for other components --------------------------------------------------------------------

    def validating_nodes(self) -> list[NodeHandle]:
        """Nodes currently in PoC validation (POC/VALIDATING), for validating received batches."""
        return [
            NodeHandle(e.node, e.client)
            for e in self._registry
            if e.state.current_status is NodeStatus.POC and e.state.poc_current_status is PocStatus.VALIDATING
        ]

    def metrics(self) -> BrokerMetrics:
        by_status = {s.name: 0 for s in NodeStatus}
        for entry in self._registry:
            by_status[entry.state.current_status.name] += 1
        return BrokerMetrics(
            nodes_by_status=by_status,
            jobs_run=self._jobs_run,
            jobs_failed=self._jobs_failed,
            jobs_cancelled=self._jobs_cancelled,
            stale_results=self._reconciler.stale_results,
            reconcile_passes=self._reconciler.passes,
            hardware_diffs_sent=self._hardware.diffs_sent,
        )

    def diagnostics(self) -> dict[str, NodeDiagnostics]:
        """Per node id: its retry backoff and the last phase command's decision for it (the operator's "why")."""
        applied = self._epoch_sync.applied
        return node_diagnostics(self._registry, self.last_command, self._clock(),
                                applied.epoch_index if applied else None)

    async def reconcile_now(self) -> PassReport:
        """Run one reconcile pass now (the loop also runs them on triggers and its timer)."""
        return await self._reconciler.reconcile_once()

    async def poll_now(self, *, force: bool = False) -> int:
        return await self._poller.poll_once(force=force)

    async def sync_hardware_now(self) -> MsgSubmitHardwareDiff | None:
        return await self._hardware.sync_once()

    # --- internals -------------------------------------------------------------------------------

    def _on_job_result(self, node_id: str, job: NodeJob, result: NodeResult) -> None:
        if result.final_status is None:
            self._jobs_cancelled += 1
        else:
            self._jobs_run += 1
            if not result.succeeded:
                self._jobs_failed += 1
        self._reconciler.apply_result(node_id, job, result)

    async def _chain_sync_loop(self) -> None:
        interval = self._settings.hardware_sync_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self._hardware.sync_once()
            except ChainError as exc:
                log.warning("hardware sync failed", error=str(exc))
            except Exception:
                log.exception("hardware sync failed")
            try:
                await self._epoch_sync.refresh_governance()
            except ChainError as exc:
                log.warning("governance models not refreshed", error=str(exc))
