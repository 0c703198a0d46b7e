"""Counts and latencies of inference requests per role, for `/v1/status`, the metrics and the dashboard.

`record(role, model, outcome, seconds)`: outcome `"ok"` or the reason it failed (the refusal's message).
`summary()` gives, per role, `ok`, `failed` by reason, and p50/p99 latency (ms) over the last requests.
Pure bookkeeping; `on_record` lets the daemon mirror each record into Prometheus.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from dapi.inference.checks import Role

__all__ = ["InferenceStats", "percentile"]

WINDOW = 2000  # latencies kept per role for the percentiles

_ROLE_NAMES = {Role.TRANSFER_AGENT: "ta", Role.EXECUTOR: "executor"}


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


class InferenceStats:
    """Outcomes and latencies per role; see the module docstring."""

    def __init__(self, on_record: Callable[[str, str, str, float], None] | None = None) -> None:
        self.on_record = on_record
        self._ok: Counter[str] = Counter()
        self._failed: dict[str, Counter[str]] = {name: Counter() for name in _ROLE_NAMES.values()}
        self._latency: dict[str, deque[float]] = {name: deque(maxlen=WINDOW) for name in _ROLE_NAMES.values()}

    def record(self, role: Role, model: str, outcome: str, seconds: float) -> None:
        name = _ROLE_NAMES[role]
        if outcome == "ok":
            self._ok[name] += 1
            self._latency[name].append(seconds)
        else:
            self._failed[name][outcome] += 1
        if self.on_record is not None:
            self.on_record(name, model, outcome, seconds)

    def ok(self, role: Role) -> int:
        return self._ok[_ROLE_NAMES[role]]

    def failed(self, role: Role) -> dict[str, int]:
        return dict(self._failed[_ROLE_NAMES[role]])

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _ROLE_NAMES.values():
            latencies = list(self._latency[name])
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            out[name] = {
                "ok": self._ok[name],
                "failed": dict(self._failed[name]),
                "p50_ms": None if p50 is None else round(p50 * 1000, 1),
                "p99_ms": None if p99 is None else round(p99 * 1000, 1),
            }
        return out
