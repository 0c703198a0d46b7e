"""Model coverage and the settlement of an epoch's reward (plan 7.x; DESIGN.md §6).

A participant that serves every model of the epoch gets its reward x 1.10, which pays for the
harder-to-serve models that a purely weight-driven network would leave uncovered.
"""

from __future__ import annotations

import decimal as _decimal
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dapi.devnet.schedule.records import Decimal, EpochGroupData

__all__ = [
    "COVERAGE_BONUS_DENOMINATOR",
    "COVERAGE_BONUS_NUMERATOR",
    "ModelCoverage",
    "RewardShare",
    "fixed_epoch_reward",
    "participant_model_coverage",
    "settle_epoch_rewards",
]

# x 1.10 as an exact ratio: rewards are integer coins, and float weights would make shares depend on rounding.
COVERAGE_BONUS_NUMERATOR = 11
COVERAGE_BONUS_DENOMINATOR = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCoverage:
    """Which of the epoch's model sub-groups a participant has an ML node in; full coverage earns the bonus."""

    participant: str
    covered_models: tuple[str, ...]  # sub-groups in which the participant has at least one ML node
    epoch_models: tuple[str, ...]  # every model sub-group of the epoch

    @property
    def is_full(self) -> bool:
        """Present in every model sub-group; an epoch without sub-groups gives nobody the bonus."""
        return bool(self.epoch_models) and set(self.covered_models) == set(self.epoch_models)


def participant_model_coverage(sub_groups: Iterable[EpochGroupData], participant: str) -> ModelCoverage:
    """GetParticipantModelCoverage (plan 7.1) over an epoch's model sub-groups."""
    groups = [g for g in sub_groups if g.model_id]
    covered = tuple(
        g.model_id
        for g in groups
        if any(vw.member_address == participant and vw.ml_nodes for vw in g.validation_weights)
    )
    return ModelCoverage(
        participant=participant, covered_models=covered, epoch_models=tuple(g.model_id for g in groups)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RewardShare:
    """One member's part of a settled epoch reward: its weight, whether it covered every model, the amount."""

    participant: str
    weight: int
    full_coverage: bool
    amount: int


def settle_epoch_rewards(
    parent: EpochGroupData, sub_groups: Sequence[EpochGroupData], epoch_reward: int
) -> tuple[RewardShare, ...]:
    """Split a fixed epoch reward by weight, a fully covering participant's weight counting x 1.10.

    Weights are the members' parent-group weights (negative counts as 0). The bonus scales a
    participant's share relative to the others, while the epoch pays out exactly `epoch_reward`:
    each share is floor(reward · w_adj / sum(w_adj)) and the rounding remainder goes to the first member with a
    positive weight, in the parent group's member order (as the reference's settlement).
    """
    members = parent.validation_weights
    coverage = {vw.member_address: participant_model_coverage(sub_groups, vw.member_address).is_full for vw in members}
    scaled = [
        max(vw.weight, 0) * (COVERAGE_BONUS_NUMERATOR if coverage[vw.member_address] else COVERAGE_BONUS_DENOMINATOR)
        for vw in members
    ]
    total = sum(scaled)
    payable = max(epoch_reward, 0)
    amounts = [w * payable // total if total > 0 else 0 for w in scaled]
    if total > 0:
        first = next(i for i, w in enumerate(scaled) if w > 0)
        amounts[first] += payable - sum(amounts)
    return tuple(
        RewardShare(
            participant=vw.member_address, weight=vw.weight, full_coverage=coverage[vw.member_address], amount=amount
        )
        for vw, amount in zip(members, amounts, strict=True)
    )


def fixed_epoch_reward(initial_epoch_reward: int, decay_rate: Decimal, epochs_since_genesis: int) -> int:
    """The chain's CalculateFixedEpochReward: initial · e^(decay · n), truncated (chain-logic.md §13).

    decay · n is exact decimal maths turned into a float64 for exp; the result is taken at its shortest
    decimal form (as the chain's decimal library does) and multiplied exactly, so the truncation does
    not depend on binary rounding of the product.
    """
    if epochs_since_genesis <= 0:
        return initial_epoch_reward
    with _decimal.localcontext() as ctx:
        ctx.prec = 100
        exponent = float(_decimal.Decimal(decay_rate.value * epochs_since_genesis).scaleb(decay_rate.exponent))
        factor = _decimal.Decimal(repr(math.exp(exponent)))
        return max(int(initial_epoch_reward * factor), 0)
