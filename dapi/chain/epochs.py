"""Epoch math: parameters, stage heights, exchange windows and the phase of a block height.

Pure functions over plain data, shared by the daemon's phase tracker and the devnet ledger, so both
sides of the wire agree on every boundary by construction. The rules are the chain's
(reference/chain-io.md §2, reference/chain-logic.md §2): all stage heights are offsets from an
epoch's PoC start, the genesis epoch (index 0) has no stages at all, and stage detection is exact
height equality, which is why a dispatcher must see every height (catch-up replays missed ones).

It is one piece on purpose: parameters, stage offsets, phases and end-block stages are one set of rules
derived from the same few numbers, and reading them side by side is how they are checked against the
chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEVNET_EPOCH_PARAMS",
    "POC_GENERATE_WIND_DOWN_FACTOR",
    "POC_VALIDATE_WIND_DOWN_FACTOR",
    "BlockWindow",
    "EndBlockStage",
    "Epoch",
    "EpochContext",
    "EpochParams",
    "EpochStages",
    "Phase",
    "UnexpectedHeightError",
    "end_block_stages",
]

# The chain computes wind-downs in float64 and truncates toward zero; Python's int(n * 0.8) does the
# same IEEE multiplication and truncation for every int64 duration a chain could hold (< 2**53).
POC_GENERATE_WIND_DOWN_FACTOR = 0.8
POC_VALIDATE_WIND_DOWN_FACTOR = 0.8


def _wind_down(duration: int, factor: float) -> int:
    return int(duration * factor)


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochParams:
    """The chain's `EpochParams` (proto `inference.inference.EpochParams`), defaults = `DefaultEpochParams()`."""

    epoch_length: int = 40
    epoch_multiplier: int = 1
    epoch_shift: int = 0
    default_unit_of_compute_price: int = 100
    poc_stage_duration: int = 10
    poc_exchange_duration: int = 2
    poc_validation_delay: int = 2
    poc_validation_duration: int = 6
    set_new_validators_delay: int = 1
    inference_validation_cutoff: int = 0
    inference_pruning_epoch_threshold: int = 2
    # Not upstream (DESIGN.md §6.1): blocks before the next PoC at which the chain re-selects the POC_SLOT
    # flags of the effective epoch; 0 = it never does (every chain without the field).
    pre_poc_selection_offset: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first field that the chain's params validation would reject.

        Not run on construction: the daemon must be able to hold whatever the chain reports.
        """
        positive = (
            "epoch_length",
            "epoch_multiplier",
            "poc_stage_duration",
            "poc_exchange_duration",
            "poc_validation_duration",
        )
        non_negative = (
            "default_unit_of_compute_price",
            "poc_validation_delay",
            "set_new_validators_delay",
            "inference_validation_cutoff",
            "pre_poc_selection_offset",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"epoch_params.{name} must be > 0, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"epoch_params.{name} must be >= 0, got {getattr(self, name)}")
        if self.inference_pruning_epoch_threshold < 1:
            raise ValueError(
                "epoch_params.inference_pruning_epoch_threshold must be >= 1, "
                f"got {self.inference_pruning_epoch_threshold}"
            )
        # The selection rewrites the *effective* epoch's flags, so it must come after the switch.
        room = self.epoch_length - self.set_new_validators_offset
        if self.pre_poc_selection_offset and self.pre_poc_selection_offset >= room:
            raise ValueError(
                f"epoch_params.pre_poc_selection_offset must be < {room} (epoch_length minus the blocks up to "
                f"set-new-validators), got {self.pre_poc_selection_offset}"
            )

    # Offsets from an epoch's PoC start (Go: methods on EpochParams).
    @property
    def poc_generation_wind_down_offset(self) -> int:
        return _wind_down(self.poc_stage_duration, POC_GENERATE_WIND_DOWN_FACTOR)

    @property
    def end_of_poc_offset(self) -> int:
        return self.poc_stage_duration

    @property
    def poc_exchange_deadline_offset(self) -> int:
        return self.poc_stage_duration + self.poc_exchange_duration

    @property
    def start_of_poc_validation_offset(self) -> int:
        return self.poc_stage_duration + self.poc_validation_delay

    @property
    def poc_validation_wind_down_offset(self) -> int:
        return self.start_of_poc_validation_offset + _wind_down(
            self.poc_validation_duration, POC_VALIDATE_WIND_DOWN_FACTOR
        )

    @property
    def end_of_poc_validation_offset(self) -> int:
        return self.start_of_poc_validation_offset + self.poc_validation_duration

    @property
    def set_new_validators_offset(self) -> int:
        return self.end_of_poc_validation_offset + self.set_new_validators_delay

    @property
    def claim_money_offset(self) -> int:
        return self.set_new_validators_offset + 1


# DESIGN.md §6: short epochs so a devnet run shows several epochs in a minute at 0.5 s blocks.
DEVNET_EPOCH_PARAMS = EpochParams(
    epoch_length=40,
    epoch_shift=0,
    poc_stage_duration=6,
    poc_exchange_duration=2,
    poc_validation_delay=1,
    poc_validation_duration=4,
    set_new_validators_delay=2,
    pre_poc_selection_offset=2,  # DESIGN.md §6.1
)


class Phase(StrEnum):
    """The chain's `EpochPhase` strings; they also appear verbatim in `/v1/epochs/latest`."""

    POC_GENERATE = "PoCGenerate"
    POC_GENERATE_WIND_DOWN = "PoCGenerateWindDown"
    POC_VALIDATE = "PoCValidate"
    POC_VALIDATE_WIND_DOWN = "PoCValidateWindDown"
    INFERENCE = "Inference"


@dataclass(frozen=True, slots=True)
class Epoch:
    """The chain's `Epoch{index, poc_start_block_height}`; the genesis epoch is `Epoch(0, 0)`."""

    index: int
    poc_start_block_height: int


@dataclass(frozen=True, slots=True)
class BlockWindow:
    """An inclusive range of block heights."""

    start: int
    end: int

    def __contains__(self, height: object) -> bool:
        return isinstance(height, int) and self.start <= height <= self.end


@dataclass(frozen=True, slots=True)
class EpochStages:
    """Every stage height of one epoch, as the reference's `GetEpochStages()` reports them."""

    epoch_index: int
    poc_start: int
    poc_generation_wind_down: int
    poc_generation_end: int
    poc_exchange_deadline: int
    poc_validation_start: int
    poc_validation_wind_down: int
    poc_validation_end: int
    set_new_validators: int
    claim_money: int
    inference_validation_cutoff: int
    next_poc_start: int
    poc_exchange_window: BlockWindow
    poc_validation_exchange_window: BlockWindow

    def as_json(self) -> dict[str, object]:
        """The JSON object of `/v1/epochs/latest` (reference/http.md §1.8): every key always present.

        The exchange deadline is not one of the reference's JSON keys (it is the PoC window's end).
        """
        return {
            "epoch_index": self.epoch_index,
            "poc_start": self.poc_start,
            "poc_generation_wind_down": self.poc_generation_wind_down,
            "poc_generation_end": self.poc_generation_end,
            "poc_validation_start": self.poc_validation_start,
            "poc_validation_wind_down": self.poc_validation_wind_down,
            "poc_validation_end": self.poc_validation_end,
            "set_new_validators": self.set_new_validators,
            "claim_money": self.claim_money,
            "inference_validation_cutoff": self.inference_validation_cutoff,
            "next_poc_start": self.next_poc_start,
            "poc_exchange_window": {"start": self.poc_exchange_window.start, "end": self.poc_exchange_window.end},
            "poc_validation_exchange_window": {
                "start": self.poc_validation_exchange_window.start,
                "end": self.poc_validation_exchange_window.end,
            },
        }


class UnexpectedHeightError(ValueError):
    """A height lies beyond the next epoch's set-new-validators stage of the effective epoch.

    The chain panics here: it means the effective epoch was not advanced at set-new-validators.
    """


_NO_WINDOW = BlockWindow(0, 0)


@dataclass(frozen=True, slots=True)
class EpochContext:
    """Absolute stage heights of one epoch (Go: `EpochContext`, `NewEpochContext(epoch, params)`).

    For the genesis epoch (index 0) every stage height is 0 and no stage predicate fires, except
    `next_poc_start` (= epoch_length - epoch_shift, the first PoC) and the cutoff derived from it.
    """

    epoch_index: int
    poc_start_block_height: int
    params: EpochParams

    @classmethod
    def for_epoch(cls, epoch: Epoch, params: EpochParams) -> EpochContext:
        return cls(epoch.index, epoch.poc_start_block_height, params)

    @classmethod
    def from_effective_epoch(cls, effective: Epoch, params: EpochParams, block_height: int) -> EpochContext:
        """The context the chain's EndBlock uses at `block_height` (chain-logic.md §2.4).

        Between the effective epoch's set-new-validators stage and the next PoC start it is the effective
        epoch; from the next PoC start up to and including that next epoch's set-new-validators stage it
        is the next epoch (which is why the next epoch's PoC stages fire while the old one is effective).
        """
        current = cls.for_epoch(effective, params)
        if current.set_new_validators < block_height < current.next_poc_start:
            return current
        upcoming = current.next_epoch()
        if block_height <= upcoming.set_new_validators:
            return upcoming
        raise UnexpectedHeightError(
            f"block height {block_height} is past set-new-validators ({upcoming.set_new_validators}) of "
            f"epoch {upcoming.epoch_index}, but the effective epoch is still {effective.index}"
        )

    @property
    def epoch(self) -> Epoch:
        return Epoch(self.epoch_index, self.poc_start_block_height)

    @property
    def is_genesis(self) -> bool:
        return self.epoch_index == 0

    def next_epoch(self) -> EpochContext:
        """The following epoch, anchored at this epoch's next PoC start."""
        return EpochContext(self.epoch_index + 1, self.next_poc_start, self.params)

    def _at(self, offset: int) -> int:
        return 0 if self.is_genesis else self.poc_start_block_height + offset

    # Absolute stage heights.
    @property
    def start_of_poc(self) -> int:
        return self._at(0)

    @property
    def poc_generation_wind_down(self) -> int:
        return self._at(self.params.poc_generation_wind_down_offset)

    @property
    def end_of_poc_generation(self) -> int:
        return self._at(self.params.end_of_poc_offset)

    @property
    def poc_exchange_deadline(self) -> int:
        return self._at(self.params.poc_exchange_deadline_offset)

    @property
    def start_of_poc_validation(self) -> int:
        return self._at(self.params.start_of_poc_validation_offset)

    @property
    def poc_validation_wind_down(self) -> int:
        return self._at(self.params.poc_validation_wind_down_offset)

    @property
    def end_of_poc_validation(self) -> int:
        return self._at(self.params.end_of_poc_validation_offset)

    @property
    def set_new_validators(self) -> int:
        return self._at(self.params.set_new_validators_offset)

    @property
    def claim_money(self) -> int:
        return self._at(self.params.claim_money_offset)

    @property
    def next_poc_start(self) -> int:
        if self.is_genesis:
            return self.params.epoch_length - self.params.epoch_shift
        return self.poc_start_block_height + self.params.epoch_length

    @property
    def inference_validation_cutoff(self) -> int:
        return self.next_poc_start - self.params.inference_validation_cutoff

    @property
    def pre_poc_selection(self) -> int | None:
        """The height at which the chain re-selects the POC_SLOT flags for the next PoC (None: it never does)."""
        offset = self.params.pre_poc_selection_offset
        return self.next_poc_start - offset if offset > 0 else None

    @property
    def poc_exchange_window(self) -> BlockWindow:
        """Heights at which a PoC batch for this epoch's stage is accepted."""
        if self.is_genesis:
            return _NO_WINDOW
        return BlockWindow(self.start_of_poc + 1, self.poc_exchange_deadline)

    @property
    def validation_exchange_window(self) -> BlockWindow:
        """Heights at which a PoC validation for this epoch's stage is accepted."""
        if self.is_genesis:
            return _NO_WINDOW
        return BlockWindow(self.start_of_poc_validation + 1, self.end_of_poc_validation)

    # Predicates a block dispatcher needs; all are exact equality, as on the chain.
    def is_start_of_poc(self, height: int) -> bool:
        # Deliberately no genesis guard (as the chain): for epoch 0 only height 0 matches, which no block has.
        return height == self.start_of_poc

    def is_end_of_poc_generation(self, height: int) -> bool:
        return not self.is_genesis and height == self.end_of_poc_generation

    def is_start_of_poc_validation(self, height: int) -> bool:
        return not self.is_genesis and height == self.start_of_poc_validation

    def is_end_of_poc_validation(self, height: int) -> bool:
        return not self.is_genesis and height == self.end_of_poc_validation

    def is_set_new_validators(self, height: int) -> bool:
        return not self.is_genesis and height == self.set_new_validators

    def is_claim_money(self, height: int) -> bool:
        return not self.is_genesis and height == self.claim_money

    def is_next_poc_start(self, height: int) -> bool:
        return height == self.next_poc_start

    def is_pre_poc_selection(self, height: int) -> bool:
        return height == self.pre_poc_selection

    def is_poc_exchange_window(self, height: int) -> bool:
        return not self.is_genesis and height in self.poc_exchange_window

    def is_validation_exchange_window(self, height: int) -> bool:
        return not self.is_genesis and height in self.validation_exchange_window

    def phase_at(self, height: int) -> Phase:
        """The chain's `GetCurrentPhase(h)`: end of validation and everything after it is Inference."""
        if self.is_genesis or height < self.start_of_poc:
            return Phase.INFERENCE
        if height < self.poc_generation_wind_down:
            return Phase.POC_GENERATE
        if height < self.start_of_poc_validation:
            return Phase.POC_GENERATE_WIND_DOWN
        if height < self.poc_validation_wind_down:
            return Phase.POC_VALIDATE
        if height < self.end_of_poc_validation:
            return Phase.POC_VALIDATE_WIND_DOWN
        return Phase.INFERENCE

    def stages(self) -> EpochStages:
        return EpochStages(
            epoch_index=self.epoch_index,
            poc_start=self.start_of_poc,
            poc_generation_wind_down=self.poc_generation_wind_down,
            poc_generation_end=self.end_of_poc_generation,
            poc_exchange_deadline=self.poc_exchange_deadline,
            poc_validation_start=self.start_of_poc_validation,
            poc_validation_wind_down=self.poc_validation_wind_down,
            poc_validation_end=self.end_of_poc_validation,
            set_new_validators=self.set_new_validators,
            claim_money=self.claim_money,
            inference_validation_cutoff=self.inference_validation_cutoff,
            next_poc_start=self.next_poc_start,
            poc_exchange_window=self.poc_exchange_window,
            poc_validation_exchange_window=self.validation_exchange_window,
        )


class EndBlockStage(StrEnum):
    """The chain's one-shot EndBlock actions, in the order they run within one block."""

    END_OF_POC_VALIDATION = "end_of_poc_validation"  # form the upcoming epoch
    SET_NEW_VALIDATORS = "set_new_validators"  # the upcoming epoch becomes effective
    START_OF_POC = "start_of_poc"  # create Epoch{effective + 1, h}
    PRE_POC_SELECTION = "pre_poc_selection"  # measure demand, re-select POC_SLOT (not upstream; DESIGN.md §6.1)


def end_block_stages(effective: Epoch, params: EpochParams, block_height: int) -> tuple[EndBlockStage, ...]:
    """The stage actions the chain runs in the EndBlock of `block_height`, in execution order.

    `effective` is the effective epoch at the start of the block; the context is not recomputed after
    set-new-validators switches it (chain-logic.md §10). With `set_new_validators_delay == 0` formation
    and the switch happen in the same block, formation first.
    """
    ctx = EpochContext.from_effective_epoch(effective, params, block_height)
    fired: list[EndBlockStage] = []
    if ctx.is_end_of_poc_validation(block_height):
        fired.append(EndBlockStage.END_OF_POC_VALIDATION)
    if ctx.is_set_new_validators(block_height):
        fired.append(EndBlockStage.SET_NEW_VALIDATORS)
    if ctx.is_start_of_poc(block_height):
        fired.append(EndBlockStage.START_OF_POC)
    if ctx.is_pre_poc_selection(block_height):
        fired.append(EndBlockStage.PRE_POC_SELECTION)
    return tuple(fired)
