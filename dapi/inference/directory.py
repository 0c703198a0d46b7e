"""Who may serve a model now, drawn locally (reference/inference.md §3.1; DESIGN.md §8 point 1).

The Transfer Agent draws the executor itself instead of asking `GetRandomExecutor` per request: from the
effective epoch's `ActiveParticipants` (one store read per epoch, cached), the members for a model are
the participants that serve it, each with its full epoch weight, and the draw is weight-proportional,
as the chain's. From the latest epoch's PoC start up to and including its set-new-validators height,
only participants with a POC_SLOT node for the model qualify (their other nodes are mining). Where the
chain re-chooses those flags before each PoC (the demand policy), the epoch is read again then.

Executors that just failed are passed in `exclude`; the caller keeps that list short-lived.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection
from dataclasses import dataclass

from dapi.chain.epochs import EpochContext, Phase
from dapi.chain.errors import ChainError
from dapi.chain.rpc import CometRPC
from dapi.chain.store import StoredValue, active_participants
from dapi.chain.view import ChainSnapshot, ChainView
from dapi.gen.inference.inference.activeparticipants_pb2 import ActiveParticipant

__all__ = ["Candidate", "EpochParticipants", "ExecutorDirectory", "NoExecutor", "ParticipantsUnavailable",
           "effective_epoch_index", "poc_filter_applies"]

POC_SLOT = 1  # index in MLNodeInfo.timeslot_allocation


class NoExecutor(Exception):
    """No participant can serve the model now."""


class ParticipantsUnavailable(NoExecutor):
    """The effective epoch's participants could not be read: the chain's own draw is the fallback."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A participant that may serve a model: its account, full epoch weight and inference URL."""

    address: str
    weight: int
    inference_url: str


def _has_poc_slot(participant: ActiveParticipant, model: str) -> bool:
    try:
        index = list(participant.models).index(model)
    except ValueError:
        return False
    if index >= len(participant.ml_nodes):
        return False
    return any(len(n.timeslot_allocation) > POC_SLOT and n.timeslot_allocation[POC_SLOT]
               for n in participant.ml_nodes[index].ml_nodes)


@dataclass(frozen=True, slots=True)
class EpochParticipants:
    """One epoch's stored ActiveParticipants, indexed for the draw."""

    epoch_index: int
    stored: StoredValue
    read_at: int = 0  # the chain height the value is known to reflect

    def candidates(self, model: str, *, poc_filter: bool) -> list[Candidate]:
        return [Candidate(p.index, p.weight, p.inference_url) for p in self.stored.value.participants
                if model in p.models and (not poc_filter or _has_poc_slot(p, model))]

    def url_of(self, address: str) -> str | None:
        for p in self.stored.value.participants:
            if p.index == address:
                return p.inference_url
        return None


def _reselected_since(cached: EpochParticipants, snapshot: ChainSnapshot) -> bool:
    """Whether the chain re-chose the effective epoch's POC_SLOT flags after `cached` was read.

    Under the demand policy the chain rewrites them `pre_poc_selection_offset` blocks before the next PoC
    (DESIGN.md §6.1); a chain without that stage reports an offset of 0.
    """
    offset = snapshot.epoch_params.pre_poc_selection_offset
    if offset <= 0 or cached.epoch_index != effective_epoch_index(snapshot):
        return False
    selection = snapshot.context.next_poc_start - offset
    return cached.read_at < selection <= snapshot.height


def effective_epoch_index(snapshot: ChainSnapshot) -> int:
    """The epoch the chain treats as current at the snapshot's height (the latest from its set-new-validators)."""
    latest = snapshot.latest_epoch.index
    if latest == 0:
        return 0
    return latest if snapshot.height >= snapshot.context.set_new_validators else latest - 1


def poc_filter_applies(snapshot: ChainSnapshot) -> bool:
    """True from the latest epoch's PoC start through its set-new-validators height (inclusive)."""
    ctx: EpochContext = snapshot.context
    return not (ctx.phase_at(snapshot.height) is Phase.INFERENCE and snapshot.height > ctx.set_new_validators)


class ExecutorDirectory:
    """The effective epoch's participants, read once per epoch; `draw` picks an executor for a model."""

    KEEP_EPOCHS = 4

    def __init__(self, rpc: CometRPC, view: ChainView, rng: random.Random | None = None) -> None:
        self._rpc = rpc
        self._view = view
        self._rng = rng or random.Random()
        self._epochs: dict[int, EpochParticipants] = {}
        self._loading: dict[int, asyncio.Future[EpochParticipants]] = {}
        self._final: set[int] = set()  # epochs read after they became effective: nothing more changes

    def _snapshot(self) -> ChainSnapshot:
        snapshot = self._view.snapshot
        if snapshot is None:
            raise NoExecutor("no block processed yet")
        return snapshot

    async def epoch(self, epoch_index: int) -> EpochParticipants:
        """The stored participants of an epoch (ChainNotFound when it has none); cached."""
        snapshot = self._snapshot()
        cached = self._epochs.get(epoch_index)
        if cached is not None and epoch_index in self._final and not _reselected_since(cached, snapshot):
            return cached
        # An epoch read before it became effective is read again once (its effective height is set then).
        effective = effective_epoch_index(snapshot)
        loading = self._loading.get(epoch_index)
        if loading is None:
            loading = asyncio.ensure_future(self._load(epoch_index, final=epoch_index <= effective))
            self._loading[epoch_index] = loading
            loading.add_done_callback(lambda _f: self._loading.pop(epoch_index, None))
        return await asyncio.shield(loading)

    async def _load(self, epoch_index: int, *, final: bool) -> EpochParticipants:
        seen = self._view.snapshot.height if self._view.snapshot else 0
        stored = await active_participants(self._rpc, epoch_index)
        loaded = EpochParticipants(epoch_index, stored, max(stored.height, seen))
        self._epochs[epoch_index] = loaded
        if final:
            self._final.add(epoch_index)
        for old in sorted(self._epochs)[:-self.KEEP_EPOCHS]:
            del self._epochs[old]
            self._final.discard(old)
        return loaded

    async def effective(self) -> EpochParticipants:
        return await self.epoch(effective_epoch_index(self._snapshot()))

    async def knows(self, model: str) -> bool | None:
        """Whether any participant of the effective epoch serves `model` at all (None: cannot tell now)."""
        try:
            participants = await self.effective()
        except (ChainError, NoExecutor):
            return None
        return any(model in p.models for p in participants.stored.value.participants)

    async def candidates(self, model: str) -> list[Candidate]:
        snapshot = self._snapshot()
        try:
            participants = await self.epoch(effective_epoch_index(snapshot))
        except ChainError as exc:
            raise ParticipantsUnavailable(f"participants of the effective epoch unavailable: {exc}") from None
        # One block early at the PoC start: the daemon acts on the last block it processed, and the nodes
        # without POC_SLOT start mining as soon as the PoC-start block is made.
        poc_next = snapshot.height + 1 >= snapshot.context.next_poc_start
        return participants.candidates(model, poc_filter=poc_filter_applies(snapshot) or poc_next)

    async def draw(self, model: str, exclude: Collection[str] = ()) -> Candidate:
        """One weight-proportional pick among those who may serve `model` now, skipping `exclude`."""
        members = [c for c in await self.candidates(model) if c.weight > 0 and c.address not in exclude]
        if not members:
            raise NoExecutor(f"no participant can serve model {model} now")
        return pick(members, self._rng)


def pick(members: list[Candidate], rng: random.Random) -> Candidate:
    total = sum(c.weight for c in members)
    r = rng.randrange(total)
    for c in members:
        r -= c.weight
        if r < 0:
            return c
    raise AssertionError("unreachable: r < total")  # pragma: no cover
