"""Per block: learn where the chain is, sync the epoch data, then fire the transitions of that height.

Order (reference/chain-io.md §2.6 to §2.8, with DESIGN.md §5 fixes 5 and 6):

1. the sync gate (CometBFT ``status.catching_up``) and ``EpochInfo`` — *as of that height* when the
   block is replayed after a gap, so a replayed boundary acts with the phase it had;
2. the chain view (what the public API and ``/v1/status`` read) and the broker's epoch state;
3. the broker's epoch data sync; if the chain cannot be read the block is retried, not skipped;
4. the one-shot transitions of this height: PoC start (new seed), end of PoC generation
   (InitValidate), start of validation (validate the others' batches), end of validation
   (InferenceUpAll: the next epoch's models load during the model-loading stage), set new validators
   (seed rotation), claim money (MsgClaimRewards);
5. the periodic phase command: every block during PoC generation and validation, every 5 blocks or
   30 s during Inference, none in the wind-downs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dapi.broker import Broker
from dapi.broker.state import EpochState
from dapi.chain.epochs import Epoch, EpochContext, Phase
from dapi.chain.rpc import ChainNodeStatus
from dapi.chain.view import ChainSnapshot, ChainView, epoch_params_from_proto
from dapi.event_listener.subscription import NewBlock
from dapi.gen.inference.inference.query_pb2 import QueryEpochInfoResponse
from dapi.logs import bind_context, get_logger
from dapi.metrics import Metrics
from dapi.poc.seeds import SeedManager
from dapi.poc.validation import BatchValidator
from dapi.runtime.tasks import TaskOwner

log = get_logger(__name__)


class ChainTip(Protocol):
    """Where the chain node is and whether it is synced (CometBFT ``status``; CometRPC in the daemon)."""

    async def status(self) -> ChainNodeStatus: ...


class EpochSource(Protocol):
    """The chain's ``EpochInfo``, as of a height when one is given (ChainQuery in the daemon)."""

    async def epoch_info(self, height: int = 0) -> QueryEpochInfoResponse: ...


@dataclass(frozen=True, slots=True)
class ReconcileCadence:
    """How often the periodic phase command repeats during Inference and during PoC generation and validation.

    A command is due once ``*_blocks`` blocks or ``*_seconds`` seconds have passed since the last one.
    """

    inference_blocks: int = 5
    inference_seconds: float = 30.0
    poc_blocks: int = 1
    poc_seconds: float = 30.0


class Dispatcher:
    """Processes one block: the sync gate, the epoch state and data, then the transitions and commands of that height.

    Args:
        rpc: for the chain node's sync status, and the tip height when a replayed block starts validation.
        query: for ``EpochInfo``, as of the block's own height when the block is replayed.
        broker: receives the epoch state, the epoch data sync and the phase commands.
        view: updated with every processed block, for the APIs and ``/v1/status``.
        seeds: submits, rotates and claims with the participant's seeds; None skips those transitions.
        validator: validates the participants' PoC batches when validation starts; None skips it.
        metrics: where blocks, the last height and the phase are reported; None reports nothing.
        cadence: how often the periodic phase command repeats.
        clock: the monotonic time source, in seconds.
    """

    def __init__(
        self,
        *,
        rpc: ChainTip,
        query: EpochSource,
        broker: Broker,
        view: ChainView,
        seeds: SeedManager | None,
        validator: BatchValidator | None,
        metrics: Metrics | None = None,
        cadence: ReconcileCadence = ReconcileCadence(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rpc = rpc
        self._query = query
        self._broker = broker
        self._view = view
        self._seeds = seeds
        self._validator = validator
        self._metrics = metrics
        self._cadence = cadence
        self._clock = clock
        self._last_command_height = 0
        self._last_command_time = clock()
        self._tasks = TaskOwner("dispatcher")
        self.transitions: list[tuple[int, str]] = []  # (height, what), for status and tests
        # (height, phase, replayed) of the last blocks processed, oldest first.
        self.recent: deque[tuple[int, Phase, bool]] = deque(maxlen=2000)
        # (height, command, accepted) of the broker phase commands issued at boundaries.
        self.commands: deque[tuple[int, str, bool]] = deque(maxlen=2000)

    async def stop(self) -> None:
        await self._tasks.stop()

    async def process(self, block: NewBlock, replayed: bool) -> None:
        bind_context(height=block.height)
        block_time_ns = 0
        if replayed:
            synced = True  # the chain node was synced when it announced a later block
        else:
            status = await self._rpc.status()
            synced, block_time_ns = not status.catching_up, status.latest_block_time_ns
        info = await self._query.epoch_info(height=block.height if replayed else 0)
        latest = Epoch(info.latest_epoch.index, info.latest_epoch.poc_start_block_height)
        params = epoch_params_from_proto(info.params)
        snapshot = ChainSnapshot(height=block.height, block_hash=block.hash, latest_epoch=latest,
                                 params=info.params, epoch_params=params, synced=synced,
                                 block_time_ns=block_time_ns)
        self._view.update(snapshot)
        self.recent.append((block.height, snapshot.phase, replayed))
        bind_context(epoch=latest.index)
        if self._metrics is not None:
            self._metrics.blocks_processed.inc()
            self._metrics.last_height.set(block.height)
            for phase in Phase:
                self._metrics.phase.labels(phase=str(phase)).set(1 if phase == snapshot.phase else 0)
        if not synced:
            log.info("chain node is catching up; no transitions", height=block.height)
            return
        state = EpochState.at_height(latest, params, block.height, block_hash=block.hash, synced=True)
        self._broker.set_epoch_state(state)
        # Raises ChainError when the chain cannot be read: the follower retries this block.
        await self._broker.update_epoch_data()
        await self._transitions(state.context, block.height, replayed)
        self._periodic(state)

    async def _transitions(self, ctx: EpochContext, h: int, replayed: bool) -> None:
        if ctx.is_start_of_poc(h) and not ctx.is_genesis:
            self._note(h, "start of PoC")
            if self._seeds is not None:
                await self._seeds.generate(ctx.epoch_index)
            return  # the periodic StartPoc of this very block starts the ML nodes
        if ctx.is_end_of_poc_generation(h):
            self._note(h, "end of PoC generation")
            self._command(h, "InitValidate", self._broker.init_validate().accepted)
        if ctx.is_start_of_poc_validation(h):
            self._note(h, "start of PoC validation")
            if self._validator is not None and await self._validation_window_open(ctx, replayed):
                self._tasks.spawn(self._validator.validate_stage(ctx.start_of_poc), "validate-batches")
        if ctx.is_end_of_poc_validation(h):
            self._note(h, "end of PoC validation")
            self._command(h, "InferenceUpAll", self._broker.inference_up_all().accepted)
        if ctx.is_set_new_validators(h):
            self._note(h, "set new validators")
            if self._seeds is not None:
                await self._seeds.rotate()
        if ctx.is_claim_money(h):
            self._note(h, "claim money")
            if self._seeds is not None:
                await self._seeds.claim()

    async def _validation_window_open(self, ctx: EpochContext, replayed: bool) -> bool:
        """A replayed start of validation whose window has closed at the tip would only yield rejected txs."""
        if not replayed:
            return True
        tip = (await self._rpc.status()).latest_block_height
        if tip >= ctx.validation_exchange_window.end:
            log.warning("validation window already closed at the chain tip; not validating this stage",
                        poc_start=ctx.start_of_poc, window_end=ctx.validation_exchange_window.end, tip=tip)
            return False
        return True

    def _command(self, height: int, name: str, accepted: bool) -> None:
        self.commands.append((height, name, accepted))

    def _note(self, height: int, what: str) -> None:
        self.transitions.append((height, what))
        del self.transitions[:-200]
        log.info("epoch transition", transition=what, height=height)

    def _periodic(self, state: EpochState) -> None:
        phase = state.phase
        if phase in (Phase.POC_GENERATE, Phase.POC_VALIDATE):
            blocks, seconds = self._cadence.poc_blocks, self._cadence.poc_seconds
        elif phase == Phase.INFERENCE:
            blocks, seconds = self._cadence.inference_blocks, self._cadence.inference_seconds
        else:
            return  # wind-downs: let the nodes finish what they are doing
        now = self._clock()
        due = state.block_height - self._last_command_height >= blocks or now - self._last_command_time >= seconds
        if not due:
            return
        if phase == Phase.POC_GENERATE:
            self._broker.start_poc()
        elif phase == Phase.POC_VALIDATE:
            self._broker.init_validate()
        else:
            self._broker.inference_up_all()
        self._last_command_height = state.block_height
        self._last_command_time = now
