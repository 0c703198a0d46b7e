"""Which finished inferences this node must validate: every height scanned once, in order, durably.

Where the events come from. The reference reads ``inference_finished`` from its Tx websocket subscription
and loses every event that passes while it is disconnected, restarting or catching up. Here the sampler
keeps its own cursor in the validation queue's sqlite file and reads each height's tx results with
CometBFT RPC ``block_results`` (the same events the Tx subscription carries, from code-0 txs), one height
after the other up to the last height the block dispatcher processed while the chain node was synced.
So live blocks, heights missed by the websocket and heights that passed while the daemon was down are
one code path, and a height's selections and the cursor move in one sqlite transaction: nothing is
sampled twice or lost. A height the chain node has pruned is skipped with a warning (its events are gone).

For every finished inference of a height (in batches of ``GetInferenceValidationParameters``):

* never the node's own inferences;
* the seed is this node's seed *of the inference's epoch* (the one the epoch's claim will carry);
* the dAPI view of inference.md §4.1: ``ShouldValidate`` with the node's parent-group power and the
  inference's ``total_power``/``executor_power``;
* the chain's claim-time view of §4.5: the same rule with the weights of the model's sub-group of that
  epoch, skipping what the chain skips (executor or validator not in the sub-group; an inference made
  from the epoch's validation cutoff on while this node has no POC_SLOT node for the model). What this
  view selects is **required**: the claim waits for it. Either view selecting is enough to validate
  (extra validations are harmless, a missing required one costs the epoch's reward).

``inference_validation`` events with ``needs_revalidation=true`` queue a re-validation (``revalidation``
set), for every node including the executor, as the reference does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from dapi.chain.epochs import Epoch, EpochContext
from dapi.chain.errors import ChainError, ChainHeightPruned, ChainNotFound
from dapi.chain.query import ChainQuery
from dapi.chain.rpc import BlockTxResult
from dapi.chain.view import ChainView
from dapi.gen.inference.inference import inference_pb2, params_pb2
from dapi.inference.sampling import SamplingParams, decimal_of, should_validate
from dapi.inference.validation_queue import Selected, ValidationQueue
from dapi.logs import get_logger
from dapi.runtime.backoff import Backoff

__all__ = ["BlockResults", "SeedSource", "ValidationSampler", "events_of", "sampling_params_of"]

log = get_logger(__name__)

POC_SLOT = 1  # index of the POC_SLOT flag in MLNodeInfo.timeslot_allocation


class BlockResults(Protocol):
    """A height's tx results with their events (CometRPC in the daemon)."""

    async def block_results(self, height: int) -> list[BlockTxResult]: ...


class SeedSource(Protocol):
    """This node's epoch seeds (the SeedManager)."""

    def seed_for(self, epoch_index: int) -> object | None: ...


def events_of(results: list[BlockTxResult]) -> tuple[list[str], list[str]]:
    """(finished inference ids, ids asked to be re-validated) of a height's successful txs, in order."""
    finished: list[str] = []
    revalidate: list[str] = []
    for tx in results:
        if tx.code != 0:
            continue
        for event in tx.events:
            if event.type == "inference_finished":
                finished.extend(v for v in event.values("inference_id") if v)
            elif event.type == "inference_validation" and event.values("needs_revalidation")[:1] == ["true"]:
                revalidate.extend(v for v in event.values("inference_id")[:1] if v)
    return list(dict.fromkeys(finished)), list(dict.fromkeys(revalidate))


def sampling_params_of(params: params_pb2.ValidationParams | None) -> SamplingParams:
    """The chain's ValidationParams as ShouldValidate reads them; unset ones keep mainnet's defaults."""
    if params is None:
        return SamplingParams()
    default = SamplingParams()

    def dec(d: Any, is_set: bool, fallback: Decimal) -> Decimal:
        return decimal_of(d.value, d.exponent) if is_set else fallback

    return SamplingParams(
        min_validation_average=dec(params.min_validation_average, params.HasField("min_validation_average"),
                                   default.min_validation_average),
        max_validation_average=dec(params.max_validation_average, params.HasField("max_validation_average"),
                                   default.max_validation_average),
        full_validation_traffic_cutoff=params.full_validation_traffic_cutoff or default.full_validation_traffic_cutoff,
        min_validation_halfway=dec(params.min_validation_halfway, params.HasField("min_validation_halfway"),
                                   default.min_validation_halfway),
        min_validation_traffic_cutoff=params.min_validation_traffic_cutoff or default.min_validation_traffic_cutoff,
    )


@dataclass(frozen=True, slots=True)
class _SubGroup:
    """A model's sub-group of one epoch as the claim check reads it."""

    weights: dict[str, int]
    total: int
    own_poc_slot: bool  # this node has a POC_SLOT node for the model (it validates past the cutoff)
    cutoff: int  # inferences created from this height on need a POC_SLOT node to be required
    threshold: float | None


class ValidationSampler:
    """Scans heights for finished inferences and records the ones this node must validate.

    Args:
        rpc: ``block_results`` per height.
        query: ``GetInferenceValidationParameters``, ``EpochGroupData`` and ``Inference``.
        view: the dispatcher's view of the chain: how far it processed and whether the node is synced.
        queue: where selections and the scan cursor are committed.
        seeds: this node's seed of each epoch.
        account: the participant's address (the requester of the parameters; own inferences are skipped).
        max_catch_up: the most heights scanned back after a long absence; older ones are skipped with a warning.
        batch: inference ids per ``GetInferenceValidationParameters`` query.
    """

    def __init__(self, *, rpc: BlockResults, query: ChainQuery, view: ChainView, queue: ValidationQueue,
                 seeds: SeedSource, account: str, max_catch_up: int = 10_000, batch: int = 100) -> None:
        self._rpc = rpc
        self._query = query
        self._view = view
        self._queue = queue
        self._seeds = seeds
        self._account = account
        self._max_catch_up = max_catch_up
        self._batch = batch
        self._groups: dict[tuple[int, str], _SubGroup | None] = {}
        self.scanned: int | None = None
        self.no_seed_epochs: set[int] = set()
        self.skipped_heights = 0

    async def run(self, wake: asyncio.Event, poll: float) -> None:
        """Scan up to the dispatcher's height whenever it moves (``wake``) or every ``poll`` seconds."""
        self.scanned = await self._queue.run(self._queue.s.scanned)
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                await self.catch_up()
                backoff.succeeded()
            except ChainError as exc:
                delay = backoff.failed(exc)
                log.warning("cannot scan for inferences to validate yet; retrying", height=(self.scanned or 0) + 1,
                            error=str(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), poll)
            except TimeoutError:
                pass

    async def catch_up(self) -> None:
        """Scan every height after the cursor up to the dispatcher's last processed height (while synced)."""
        snapshot = self._view.snapshot
        if snapshot is None or not snapshot.synced:
            return  # the reference samples only while synced; the cursor waits and nothing is lost
        tip = snapshot.height
        if self.scanned is None:
            # First start: from the first processed block (earlier events are before this node's time).
            await self._commit([], tip - 1)
        assert self.scanned is not None
        if tip - self.scanned > self._max_catch_up:
            first = tip - self._max_catch_up
            log.warning("too many heights to scan for validations; older ones skipped", first=self.scanned + 1,
                        last=first - 1)
            self.skipped_heights += first - 1 - self.scanned
            await self._commit([], first - 1)
        while self.scanned < tip:
            await self.scan(self.scanned + 1)

    async def scan(self, height: int) -> None:
        try:
            results = await self._rpc.block_results(height)
        except ChainHeightPruned as exc:
            log.warning("a height to scan for validations is pruned; skipped", height=height, error=str(exc))
            self.skipped_heights += 1
            await self._commit([], height)
            return
        finished, revalidate = events_of(results)
        selected: list[Selected] = []
        for start in range(0, len(finished), self._batch):
            selected.extend(await self.sample(finished[start:start + self._batch], height))
        for inference_id in revalidate:
            selected.extend(await self._revalidation(inference_id, height))
        await self._commit(selected, height)
        for s in selected:
            log.info("inference selected for validation", inference_id=s.inference_id, epoch=s.epoch,
                     required=s.required, revalidation=s.revalidation, height=height)

    async def _commit(self, selected: list[Selected], height: int) -> None:
        await self._queue.run(self._queue.s.record, selected, height)
        self.scanned = height

    async def sample(self, inference_ids: list[str], height: int) -> list[Selected]:
        """§4.1 for one batch (and the claim-time view of §4.5): the ids this node validates."""
        response = await self._query.validation_parameters(inference_ids, self._account)
        params = sampling_params_of(response.parameters if response.HasField("parameters") else None)
        chosen: list[Selected] = []
        for details in response.details:
            if details.executor_id == self._account:
                continue
            seed_record = self._seeds.seed_for(details.epoch_id)
            seed_value = getattr(seed_record, "seed", None)
            if not isinstance(seed_value, int):
                if details.epoch_id not in self.no_seed_epochs:
                    self.no_seed_epochs.add(details.epoch_id)
                    log.warning("no seed of this epoch: its inferences are not sampled (nor can it be claimed)",
                                epoch=details.epoch_id)
                continue
            seed: int = seed_value

            def draw(total: int, validator: int, executor: int, d: inference_pb2.InferenceValidationDetails = details,
                     s: int = seed) -> bool:
                return should_validate(seed=s, inference_id=d.inference_id, traffic_basis=d.traffic_basis,
                                       executor_reputation=d.executor_reputation, total_power=total,
                                       validator_power=validator, executor_power=executor, params=params)

            node_view = details.total_power > details.executor_power and draw(
                details.total_power, response.validator_power, details.executor_power)
            group = await self._sub_group(details.epoch_id, details.model)
            chain_view = required = False
            if group is not None:
                own, executor = group.weights.get(self._account), group.weights.get(details.executor_id)
                if own is not None and executor is not None:
                    chain_view = draw(group.total, own, executor)
                    required = chain_view and (details.created_at_block_height < group.cutoff or group.own_poc_slot)
            if node_view or chain_view:
                chosen.append(Selected(details.inference_id, details.epoch_id, details.model, required,
                                       group.threshold if group else None, height))
        return chosen

    async def _revalidation(self, inference_id: str, height: int) -> list[Selected]:
        try:
            inference = await self._query.inference(inference_id)
        except ChainNotFound:
            return []
        group = await self._sub_group(inference.epoch_id, inference.model)
        return [Selected(inference_id, inference.epoch_id, inference.model, False,
                         group.threshold if group else None, height, revalidation=True)]

    async def _sub_group(self, epoch: int, model: str) -> _SubGroup | None:
        key = (epoch, model)
        if key in self._groups:
            return self._groups[key]
        try:
            data = await self._query.epoch_group_data(epoch, model)
        except ChainNotFound:
            data = None
        snapshot = self._view.snapshot
        group: _SubGroup | None = None
        if data is not None and data.validation_weights and snapshot is not None:
            weights = {w.member_address: w.weight for w in data.validation_weights}
            own = next((w for w in data.validation_weights if w.member_address == self._account), None)
            poc_slot = own is not None and any(
                len(n.timeslot_allocation) > POC_SLOT and n.timeslot_allocation[POC_SLOT] for n in own.ml_nodes)
            ctx = EpochContext.for_epoch(Epoch(epoch, data.poc_start_block_height), snapshot.epoch_params)
            threshold = None
            if data.HasField("model_snapshot") and data.model_snapshot.HasField("validation_threshold"):
                t = data.model_snapshot.validation_threshold
                threshold = float(decimal_of(t.value, t.exponent))
            group = _SubGroup(weights, sum(weights.values()), poc_slot, ctx.inference_validation_cutoff, threshold)
        if group is None:
            return None  # not cached: a later ask may find it
        self._groups[key] = group
        if len(self._groups) > 256:  # a few epochs times models; the oldest go first
            del self._groups[next(iter(self._groups))]
        return group
