"""The Transfer Agent's bandwidth limit (reference/inference.md §7.2).

Each TA may have in flight, over the last `L + 1` blocks (`L` = `expiration_blocks`), at most
`estimated_limits_per_block_kb / participants` KB per block on average. A request costs
`prompt_bytes · kb_per_input_token + max_tokens · kb_per_output_token` KB, is counted from the block it
was accepted at until `L` blocks later, and is forgotten as soon as its handler returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from dapi.gen.inference.inference.params_pb2 import BandwidthLimitsParams
from dapi.inference.sampling import decimal_of

__all__ = ["BandwidthLimiter", "request_kb"]

DEFAULT_LIMIT_KB = 21504
DEFAULT_IN = 0.0023
DEFAULT_OUT = 0.64
DEFAULT_LIFESPAN = 10


def _rate(value: object, default: float) -> float:
    v = getattr(value, "value", 0)
    return float(decimal_of(v, getattr(value, "exponent", 0))) if v else default


def request_kb(params: BandwidthLimitsParams, prompt_bytes: int, max_tokens: int) -> float:
    kb_in, kb_out = _rate(params.kb_per_input_token, DEFAULT_IN), _rate(params.kb_per_output_token, DEFAULT_OUT)
    return prompt_bytes * kb_in + max_tokens * kb_out


@dataclass(frozen=True, slots=True)
class _Use:
    until: int  # the last height the request counts at
    kb: float


class BandwidthLimiter:
    """The KB of this TA's requests in flight, and whether one more fits under the limit."""

    def __init__(self) -> None:
        self._uses: dict[int, _Use] = {}
        self._ids = count(1)

    def in_flight_kb(self, height: int) -> float:
        return sum(u.kb for u in self._uses.values() if u.until >= height)

    def acquire(self, *, height: int, lifespan: int, limit_per_block_kb: float, kb: float) -> int | None:
        """A ticket to `release` when the request ends, or None when the limit would be exceeded."""
        lifespan = lifespan if lifespan > 0 else DEFAULT_LIFESPAN
        if (self.in_flight_kb(height) + kb) / (lifespan + 1) > limit_per_block_kb:
            return None
        ticket = next(self._ids)
        self._uses[ticket] = _Use(height + lifespan, kb)
        return ticket

    def release(self, ticket: int) -> None:
        self._uses.pop(ticket, None)

    @staticmethod
    def limit_per_block(params: BandwidthLimitsParams, participants: int) -> float:
        total = params.estimated_limits_per_block_kb or DEFAULT_LIMIT_KB
        return total / max(1, participants)
