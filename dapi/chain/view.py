"""What the daemon currently knows of the chain, written by the block dispatcher, read by everyone.

Holding it in one plain object means the public API answers epoch questions from memory (no chain
query per request) and ``/v1/status`` can say how far the daemon has followed the chain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dapi.chain.epochs import Epoch, EpochContext, EpochParams, Phase
from dapi.gen.inference.inference.params_pb2 import Params


def epoch_params_from_proto(params: Params) -> EpochParams:
    p = params.epoch_params
    return EpochParams(
        epoch_length=p.epoch_length,
        epoch_multiplier=p.epoch_multiplier,
        epoch_shift=p.epoch_shift,
        default_unit_of_compute_price=p.default_unit_of_compute_price,
        poc_stage_duration=p.poc_stage_duration,
        poc_exchange_duration=p.poc_exchange_duration,
        poc_validation_delay=p.poc_validation_delay,
        poc_validation_duration=p.poc_validation_duration,
        set_new_validators_delay=p.set_new_validators_delay,
        inference_validation_cutoff=p.inference_validation_cutoff,
        inference_pruning_epoch_threshold=p.inference_pruning_epoch_threshold,
        pre_poc_selection_offset=p.pre_poc_selection_offset,
    )


@dataclass(frozen=True, slots=True)
class ChainSnapshot:
    """The chain as of one processed block."""

    height: int
    block_hash: str
    latest_epoch: Epoch
    params: Params  # the chain's full params, as last reported by EpochInfo
    epoch_params: EpochParams
    synced: bool
    block_time_ns: int = 0  # the chain tip's block time as CometBFT /status gave it with this block; 0: not read

    @property
    def context(self) -> EpochContext:
        return EpochContext.for_epoch(self.latest_epoch, self.epoch_params)

    @property
    def phase(self) -> Phase:
        return self.context.phase_at(self.height)


class ChainView:
    """The latest :class:`ChainSnapshot` and when it came; written by the dispatcher each block, read by the APIs."""

    def __init__(self) -> None:
        self.snapshot: ChainSnapshot | None = None
        self.updated_at: float | None = None  # monotonic time of the last processed block

    def update(self, snapshot: ChainSnapshot) -> None:
        self.snapshot = snapshot
        self.updated_at = time.monotonic()
