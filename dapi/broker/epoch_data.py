"""Epoch data from the chain: per-node EpochModels/EpochMLNodes, and the cache the public API reads.

UpdateNodeWithEpochData (reference/broker.md §3.2) walks the latest epoch's parent group →
`sub_group_models` → each model's sub-group → the own participant's `validation_weights[].ml_nodes`.
While the latest epoch's group has no sub-groups yet (its PoC and validation are running) the nodes keep
the previous epoch's data: that is where the POC_SLOT allocation governing the current PoC lives.

Differences from the reference, each deliberate:
* the sync is recorded as done only after it succeeded (DESIGN.md §5 fix 5), so a failed one is retried
  on the next block; a transient failure of one sub-group query fails the whole sync (and changes
  nothing) rather than leaving nodes with half the models; a sub-group the chain says does not exist is
  skipped, as in the reference;
* sub-groups are queried with the epoch index we asked for, not the parent's own `epoch_index` field;
* a daemon that starts during a PoC has no "previous data" to keep, so it loads the effective epoch's
  group (CurrentEpochGroupData) instead — otherwise POC_SLOT would be ignored for that PoC;
* the fetched groups are kept per epoch index, so the cache of the *effective* epoch (what /v1/models and
  /v1/pricing describe, plan 11.1) costs one extra query per epoch: it switches to the latest epoch's
  data at the set-new-validators height, re-reading only the parent group, because that is when the
  chain writes the epoch's price. A steady-state sync of an epoch with N models is 2 + N queries;
* a chain that re-selects the POC_SLOT flags before each PoC (`EpochParams.pre_poc_selection_offset` > 0,
  DESIGN.md §6.1; not upstream) rewrites the effective epoch's sub-groups at that height, so the epoch is
  read once more there (1 + N queries, once per epoch), and the nodes mine or serve as the new flags say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dapi.broker.chain_reader import ChainReader
from dapi.broker.state import EpochState
from dapi.chain.epochs import Phase
from dapi.chain.errors import ChainError, ChainNotFound
from dapi.gen.inference.inference.epoch_group_data_pb2 import EpochGroupData, MLNodeInfo
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.logs import get_logger

__all__ = ["EpochCache", "EpochDataSync", "EpochSnapshot", "NodeEpochData"]

log = get_logger("dapi.broker.epoch_data")


@dataclass(frozen=True, slots=True)
class NodeEpochData:
    """One own node's entries of an epoch, keyed by model id (chain messages are shared, read-only)."""

    models: Mapping[str, Model]
    ml_nodes: Mapping[str, MLNodeInfo]


@dataclass(frozen=True, slots=True)
class EpochSnapshot:
    """What one epoch's groups say: its models (sub-group order), price, and the own nodes' entries.

    `formed` is False while the parent group has no sub-groups (the epoch's PoC has not been settled).
    """

    epoch_index: int
    unit_of_compute_price: int
    models: tuple[Model, ...] = ()
    nodes: Mapping[str, NodeEpochData] = field(default_factory=dict)
    formed: bool = False


class EpochCache:
    """Read side for the public API: no chain query behind any of these, ever."""

    def __init__(self) -> None:
        self._effective: EpochSnapshot | None = None
        self._governance: tuple[Model, ...] = ()
        self._governance_by_id: Mapping[str, Model] = MappingProxyType({})
        self.version = 0  # bumps whenever anything here changes, so a reader can cache what it renders

    @property
    def ready(self) -> bool:
        """Whether the effective epoch's data has been loaded at least once."""
        return self._effective is not None

    @property
    def epoch_index(self) -> int | None:
        """Index of the effective epoch the models and price belong to (None before the first sync)."""
        return self._effective.epoch_index if self._effective else None

    @property
    def unit_of_compute_price(self) -> int:
        return self._effective.unit_of_compute_price if self._effective else 0

    def models(self) -> tuple[Model, ...]:
        """The effective epoch's model snapshots in sub-group order (do not modify them)."""
        return self._effective.models if self._effective else ()

    def governance_models(self) -> tuple[Model, ...]:
        return self._governance

    @property
    def governance_by_id(self) -> Mapping[str, Model]:
        return self._governance_by_id

    def _set_effective(self, snapshot: EpochSnapshot) -> None:
        if snapshot is not self._effective:
            self._effective = snapshot
            self.version += 1

    def _set_governance(self, models: list[Model]) -> None:
        self._governance = tuple(models)
        self._governance_by_id = MappingProxyType({m.id: m for m in models})
        self.version += 1


class EpochDataSync:
    """Fetches epoch groups when the epoch or phase changes and decides what the nodes should hold."""

    def __init__(self, chain: ChainReader, participant: str, cache: EpochCache) -> None:
        self._chain = chain
        self._participant = participant
        self.cache = cache
        self._last: tuple[int, Phase] | None = None
        self._store: dict[int, EpochSnapshot] = {}
        self._effective_for: int | None = None
        # Epochs whose parent group was read once they were effective, so its price is the final one.
        self._priced: set[int] = set()
        self._applied: EpochSnapshot | None = None
        # The epoch whose allocations were read at or after its pre-PoC selection height.
        self._reselected: int | None = None

    @property
    def applied(self) -> EpochSnapshot | None:
        """The snapshot whose entries the nodes currently hold (for nodes registered later)."""
        return self._applied

    def node_data(self, node_id: str) -> NodeEpochData | None:
        return self._applied.nodes.get(node_id) if self._applied else None

    async def sync(self, state: EpochState) -> EpochSnapshot | None:
        """Bring epoch data up to `state`; returns the snapshot to apply to the nodes, None to keep theirs.

        Raises ChainError when a query failed; nothing is recorded then, so the next call retries.
        """
        latest = state.latest_epoch_index
        to_apply: EpochSnapshot | None = None
        reselect = self._reselection_due(state)
        due = self._last is None or latest > self._last[0] or state.phase != self._last[1] or reselect
        if due:
            epoch_changed = self._last is not None and latest != self._last[0]
            snapshot = await self._fetch_latest(latest)
            if state.effective_epoch_index == latest:
                self._priced.add(latest)
            known = self._store.get(latest)
            if snapshot.formed or known is None or not known.formed:
                self._store[latest] = snapshot
            if snapshot.formed:
                to_apply = snapshot
            if epoch_changed:
                # Governance changes only by proposal; once per epoch (besides registration and the
                # periodic sync) keeps /v1/governance/models fresh without a query per phase.
                await self._refresh_governance_quietly()
        effective = await self._ensure_effective(state)
        latest_known = self._store.get(latest)
        latest_formed = latest_known is not None and latest_known.formed
        if (
            to_apply is None
            and not latest_formed
            and effective.formed
            and (self._applied is None or self._applied.epoch_index < effective.epoch_index)
        ):
            # Started (or fell behind) during a PoC: the effective epoch's allocation is what governs it.
            to_apply = effective
        if to_apply is not None:
            self._applied = to_apply
        if due and self._past_selection(state):
            self._reselected = latest
        self._last = (latest, state.phase)
        self._prune(min(latest, state.effective_epoch_index) - 1)
        return to_apply

    @staticmethod
    def _past_selection(state: EpochState) -> bool:
        """At or after the latest epoch's pre-PoC selection height (and before the PoC it prepares)."""
        ctx = state.context
        selection = ctx.pre_poc_selection
        return not ctx.is_genesis and selection is not None and selection <= state.block_height < ctx.next_poc_start

    def _reselection_due(self, state: EpochState) -> bool:
        # Not "== the height": a sync that failed there is retried on the next block, before the PoC.
        return self._past_selection(state) and self._reselected != state.latest_epoch_index

    async def refresh_governance(self) -> tuple[Model, ...]:
        models = await self._chain.models_all()
        self.cache._set_governance(models)
        return self.cache.governance_models()

    def set_governance(self, models: list[Model]) -> None:
        """Governance models fetched elsewhere (registration) are fresh too; keep them."""
        self.cache._set_governance(models)

    async def _refresh_governance_quietly(self) -> None:
        try:
            await self.refresh_governance()
        except ChainError as exc:
            log.warning("governance models not refreshed", error=str(exc))

    async def _ensure_effective(self, state: EpochState) -> EpochSnapshot:
        index = state.effective_epoch_index
        current = self._store.get(index)
        if self._effective_for == index and current is not None:
            self.cache._set_effective(current)
            return current
        if current is not None and current.formed and index not in self._priced:
            # The real chain forms an epoch with no price and writes `unit_of_compute_price` into its
            # parent group only at set-new-validators (moveUpcomingToEffectiveGroup): the copy fetched
            # at end of validation is stale for the price, so the switch reads the parent once more.
            parent = await self._chain.epoch_group_data(index, "")
            if parent.unit_of_compute_price != current.unit_of_compute_price:
                current = dataclasses.replace(current, unit_of_compute_price=parent.unit_of_compute_price)
                self._store[index] = current
            self._priced.add(index)
        if current is None:
            parent = await self._chain.current_epoch_group_data()
            got = parent.epoch_index
            if got != index:
                log.warning("CurrentEpochGroupData is for another epoch", expected=index, got=got)
            current = await self._snapshot_of(got, parent)
            self._store[got] = current
            # Also under the index we asked for, or every later block would query again.
            self._store[index] = current
            self._priced.update((got, index))
        self._effective_for = index
        self.cache._set_effective(current)
        return current

    async def _fetch_latest(self, epoch_index: int) -> EpochSnapshot:
        try:
            parent = await self._chain.epoch_group_data(epoch_index, "")
        except ChainNotFound:
            # The group is created at the epoch's PoC start; until then there is nothing to load.
            return EpochSnapshot(epoch_index, 0)
        return await self._snapshot_of(epoch_index, parent)

    async def _snapshot_of(self, epoch_index: int, parent: EpochGroupData) -> EpochSnapshot:
        price = parent.unit_of_compute_price
        if not parent.sub_group_models:
            return EpochSnapshot(epoch_index, price)
        models: list[Model] = []
        nodes: dict[str, tuple[dict[str, Model], dict[str, MLNodeInfo]]] = {}
        for model_id in parent.sub_group_models:
            try:
                group = await self._chain.epoch_group_data(epoch_index, model_id)
            except ChainNotFound:
                log.warning("model sub-group listed but not found", epoch=epoch_index, model=model_id)
                continue
            if not group.HasField("model_snapshot"):
                continue
            snapshot = Model()
            snapshot.CopyFrom(group.model_snapshot)
            models.append(snapshot)
            for weight in group.validation_weights:
                # Only our own entries: another member may list ML nodes with the same ids (DESIGN.md §4.6).
                if weight.member_address != self._participant:
                    continue
                for info in weight.ml_nodes:
                    own_models, own_infos = nodes.setdefault(info.node_id, ({}, {}))
                    own_models[model_id] = snapshot
                    copied = MLNodeInfo()
                    copied.CopyFrom(info)
                    own_infos[model_id] = copied
        frozen = {node_id: NodeEpochData(MappingProxyType(m), MappingProxyType(i)) for node_id, (m, i) in nodes.items()}
        return EpochSnapshot(epoch_index, price, tuple(models), MappingProxyType(frozen), formed=True)

    def _prune(self, keep_from: int) -> None:
        for index in [i for i in self._store if i < keep_from]:
            del self._store[index]
        self._priced = {i for i in self._priced if i >= keep_from}
