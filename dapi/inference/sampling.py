"""Which inferences a validator must validate: the chain's `ShouldValidate` (reference/inference.md §4.1).

The API node samples with it after every `inference_finished` event, and the chain recomputes it at
reward claim time (§4.5): an inference it says must be validated and was not costs the claim its reward.
So both sides must compute the same answer; this module is that one computation, pure and in decimal
arithmetic as the chain does it (shopspring decimal: a quotient is rounded half away from zero to 16
decimal places).

* ``minimum_validation_average(traffic_basis)``: the floor of the expected validations per inference,
  falling from ``max_validation_average`` at low traffic to ``min_validation_average`` at full traffic;
* ``validation_probability``: ``min(1, target · validator_power / (total_power - executor_power))`` with
  ``target = minAvg + (max - minAvg) · (1 - reputation/100)``;
* ``random_fraction(seed, inference_id)``: the first 8 bytes of sha256("<seed>:<inference_id>") as a
  big-endian integer over 2^64 - 1;
* ``should_validate``: ``random_fraction < validation_probability``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext

__all__ = [
    "SamplingParams",
    "minimum_validation_average",
    "random_fraction",
    "should_validate",
    "validation_probability",
]

_QUOTIENT = Decimal(1).scaleb(-16)  # shopspring's DivisionPrecision: 16 decimal places
_CONTEXT = Context(prec=60)
_UINT64_MAX = Decimal(2**64 - 1)
_ONE = Decimal(1)


def _div(a: Decimal, b: Decimal) -> Decimal:
    with localcontext(_CONTEXT):
        return (a / b).quantize(_QUOTIENT, rounding=ROUND_HALF_UP)


def decimal_of(value: int, exponent: int) -> Decimal:
    """The chain's `Decimal{value, exponent}` as an exact decimal."""
    return Decimal(value).scaleb(exponent)


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """The validation params `ShouldValidate` reads (chain `ValidationParams`; defaults are mainnet's)."""

    min_validation_average: Decimal = Decimal("0.01")
    max_validation_average: Decimal = Decimal("1.0")
    full_validation_traffic_cutoff: int = 10_000
    min_validation_halfway: Decimal = Decimal("0.05")
    min_validation_traffic_cutoff: int = 100


def minimum_validation_average(traffic_basis: int, params: SamplingParams = SamplingParams()) -> Decimal:
    """The chain's `CalculateMinimumValidationAverage`: validations expected per inference at this traffic."""
    n = Decimal(traffic_basis)
    full = Decimal(params.full_validation_traffic_cutoff)
    half = _div(full, Decimal(2))
    low_cutoff = Decimal(params.min_validation_traffic_cutoff)
    m, mh, top = params.min_validation_average, params.min_validation_halfway, params.max_validation_average
    with localcontext(_CONTEXT):
        if n >= full:
            return m
        if n >= half:
            return m + _div((mh - m) * (full - n), half)
        if n > low_cutoff:
            return mh + _div((top - mh) * (half - n), half - low_cutoff)
        return top


def validation_probability(
    *,
    traffic_basis: int,
    executor_reputation: int,
    total_power: int,
    validator_power: int,
    executor_power: int,
    params: SamplingParams = SamplingParams(),
) -> Decimal:
    """How likely this validator must validate the inference (0 when no one but the executor has power)."""
    others = total_power - executor_power
    if others <= 0:
        return Decimal(0)
    minimum = minimum_validation_average(traffic_basis, params)
    reputation = _div(Decimal(executor_reputation), Decimal(100))
    with localcontext(_CONTEXT):
        target = minimum + (params.max_validation_average - minimum) * (_ONE - reputation)
        probability = _div(target * Decimal(validator_power), Decimal(others))
    return min(_ONE, probability)


def random_fraction(seed: int, inference_id: str) -> Decimal:
    """The validator's deterministic draw in [0, 1] for one inference under one epoch seed."""
    digest = hashlib.sha256(f"{seed}:{inference_id}".encode()).digest()
    return _div(Decimal(int.from_bytes(digest[:8], "big")), _UINT64_MAX)


def should_validate(
    *,
    seed: int,
    inference_id: str,
    traffic_basis: int,
    executor_reputation: int,
    total_power: int,
    validator_power: int,
    executor_power: int,
    params: SamplingParams = SamplingParams(),
) -> bool:
    """The chain's `ShouldValidate`: must this validator validate this inference under this seed?"""
    probability = validation_probability(
        traffic_basis=traffic_basis,
        executor_reputation=executor_reputation,
        total_power=total_power,
        validator_power=validator_power,
        executor_power=executor_power,
        params=params,
    )
    return random_fraction(seed, inference_id) < probability
