"""Counts and latencies of inference requests per role, for `/v1/status`, the metrics and the dashboard.

`record(role, model, outcome, seconds)`: outcome `"ok"` or the reason it failed (the refusal's message).
`summary()` gives, per role, `ok`, `failed` by reason, and p50/p99 latency (ms) over the last requests.
Pure bookkeeping; `on_record` lets the daemon mirror each record into Prometheus.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dapi.inference.checks import Role
from dapi.logs import get_logger

__all__ = ["InferenceRecord", "InferenceStats", "percentile"]

log = get_logger("dapi.inference")

WINDOW = 2000  # latencies kept per role for the percentiles

_ROLE_NAMES = {Role.TRANSFER_AGENT: "ta", Role.EXECUTOR: "executor"}


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class InferenceRecord:
    """How one request ended, in one role (`first_byte`: seconds to the answer's first byte, if it started)."""

    role: str
    model: str
    outcome: str
    seconds: float
    inference_id: str = ""
    executor: str = ""
    first_byte: float | None = None
    tokens: int = 0


class InferenceStats:
    """Outcomes and latencies per role; see the module docstring."""

    def __init__(self, on_record: Callable[[InferenceRecord], None] | None = None,
                 on_retry: Callable[[], None] | None = None) -> None:
        self.on_record = on_record
        self.on_retry = on_retry
        self.retried = 0  # executors skipped by the TA before one answered
        self._ok: Counter[str] = Counter()
        self._failed: dict[str, Counter[str]] = {name: Counter() for name in _ROLE_NAMES.values()}
        self._latency: dict[str, deque[float]] = {name: deque(maxlen=WINDOW) for name in _ROLE_NAMES.values()}

    def record(self, role: Role, model: str, outcome: str, seconds: float, *, inference_id: str = "",
               executor: str = "", first_byte: float | None = None, tokens: int = 0) -> None:
        """Count one request's end and write its one log line."""
        name = _ROLE_NAMES[role]
        if outcome == "ok":
            self._ok[name] += 1
            self._latency[name].append(seconds)
        else:
            self._failed[name][outcome] += 1
        log.info("inference", role=name, inference_id=inference_id[:16], model=model, executor=executor,
                 outcome=outcome, ms=round(seconds * 1000, 1),
                 first_byte_ms=None if first_byte is None else round(first_byte * 1000, 1), tokens=tokens)
        if self.on_record is not None:
            self.on_record(InferenceRecord(name, model, outcome, seconds, inference_id, executor, first_byte, tokens))

    def note_retry(self) -> None:
        self.retried += 1
        if self.on_retry is not None:
            self.on_retry()

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
                **({"retried": self.retried} if name == "ta" else {}),
                "failed": dict(self._failed[name]),
                "p50_ms": None if p50 is None else round(p50 * 1000, 1),
                "p99_ms": None if p99 is None else round(p99 * 1000, 1),
            }
        return out
