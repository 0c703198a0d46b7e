"""Records of the inference path on the chain: the inference, its validation details, each participant's work.

They mirror the chain's protobuf messages (reference/inference.md §2.1, chain-io.md §5.10) field for
field and are immutable: the handlers write a new record with `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_PER_TOKEN_PRICE",
    "EpochStats",
    "Inference",
    "InferenceStatus",
    "ParticipantStatus",
    "ParticipantWork",
    "ValidationDetails",
]

# calculations.PerTokenCost: the price of a model with no entry in the chain's current price map.
DEFAULT_PER_TOKEN_PRICE = 1000
# A Start with max_tokens 0 reserves this many completion tokens (getMaxTokens).
DEFAULT_MAX_TOKENS = 5000


class InferenceStatus(IntEnum):
    """`InferenceStatus`: where an inference is in its life (§2.5)."""

    STARTED = 0
    FINISHED = 1
    VALIDATED = 2
    INVALIDATED = 3
    VOTING = 4
    EXPIRED = 5


class ParticipantStatus(IntEnum):
    """`ParticipantStatus`, recomputed for an executor after every validation of its work (§4.4)."""

    UNSPECIFIED = 0
    ACTIVE = 1
    INACTIVE = 2
    INVALID = 3
    RAMPING = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Inference:
    """One inference (`Inference`): written by MsgStartInference and MsgFinishInference in either order."""

    inference_id: str
    prompt_hash: str = ""
    prompt_payload: str = ""
    response_hash: str = ""
    response_payload: str = ""
    prompt_token_count: int = 0
    completion_token_count: int = 0
    requested_by: str = ""
    executed_by: str = ""
    status: InferenceStatus = InferenceStatus.STARTED
    start_block_height: int = 0
    end_block_height: int = 0
    start_block_timestamp: int = 0  # ms
    end_block_timestamp: int = 0  # ms
    model: str = ""
    max_tokens: int = 0
    actual_cost: int = 0
    escrow_amount: int = 0
    assigned_to: str = ""
    validated_by: tuple[str, ...] = ()
    node_version: str = ""
    epoch_id: int = 0
    epoch_poc_start_block_height: int = 0
    transferred_by: str = ""
    request_timestamp: int = 0  # the client's, ns
    transfer_signature: str = ""
    execution_signature: str = ""
    original_prompt: str = ""
    per_token_price: int = 0

    @property
    def index(self) -> str:
        return self.inference_id

    @property
    def start_processed(self) -> bool:
        """MsgStartInference has been applied (the chain's `StartProcessed`: prompt_hash is set)."""
        return self.prompt_hash != ""

    @property
    def finish_processed(self) -> bool:
        """MsgFinishInference has been applied (executed_by is set)."""
        return self.executed_by != ""

    @property
    def is_completed(self) -> bool:
        """Both messages applied: the chain's `IsCompleted()`."""
        return self.model != "" and self.requested_by != "" and self.executed_by != ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_token_count + self.completion_token_count

    @property
    def stat_time_ms(self) -> int:
        """When the developer statistics place it: the end block's time, else the start block's."""
        return self.end_block_timestamp or self.start_block_timestamp


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationDetails:
    """`InferenceValidationDetails`, written at completion: what sampling needs about one inference."""

    epoch_id: int
    inference_id: str
    executor_id: str
    executor_reputation: int
    traffic_basis: int
    executor_power: int
    model: str
    total_power: int
    created_at_block_height: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochStats:
    """`CurrentEpochStats` of a participant; reset when its epoch is settled."""

    inference_count: int = 0
    missed_requests: int = 0
    earned_coins: int = 0
    rewarded_coins: int = 0
    burned_coins: int = 0
    validated_inferences: int = 0
    invalidated_inferences: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantWork:
    """The inference side of a participant's `Participant` record: status, coins owed, this epoch's stats."""

    status: ParticipantStatus = ParticipantStatus.ACTIVE
    coin_balance: int = 0
    consecutive_invalid_inferences: int = 0
    last_inference_time: int = 0
    epochs_completed: int = 0
    current_epoch_stats: EpochStats = field(default_factory=EpochStats)
