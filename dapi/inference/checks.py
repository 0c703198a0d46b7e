"""The request checks the Transfer Agent and the Executor share (reference/inference.md §7.1, §7.3).

* `RequestHeaders`: the signed request's headers (`Authorization` is the developer signature and the
  inference id, `X-Timestamp` in ns, `X-Requester-Address`, `X-Transfer-Address`).
* `check_timestamp`: the request time against the latest block time, within the chain's
  `timestamp_expiration` / `timestamp_advance` (seconds; 10 s when the chain says 0).
* `ReplayGuard`: an `Authorization` value is used once per role (TA, executor); entries are pruned
  `max(4, timestamp_expiration·2/4)` blocks after they were recorded, as the reference does.
* `Rejected`: a refusal with the status and message of the reference (plus `Retry-After` when useful).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntFlag

__all__ = ["FALLBACK_WINDOW_SECONDS", "Rejected", "ReplayGuard", "RequestHeaders", "Role", "check_timestamp",
           "replay_window_blocks"]

FALLBACK_WINDOW_SECONDS = 10
_NS = 1_000_000_000


class Rejected(Exception):
    """The request is refused with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        """A short, address-free label for counting (the status and the message up to its first colon)."""
        return f"{self.status} {self.message.split(':', 1)[0]}"


class Role(IntFlag):
    """Who checked an Authorization value (the reference's context bits)."""

    TRANSFER_AGENT = 1
    EXECUTOR = 2


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """The headers a signed request carries; `transfer_address` defaults to the receiving node's account."""

    authorization: str
    requester: str
    timestamp: int
    transfer_address: str

    @classmethod
    def parse(cls, headers: Mapping[str, str], own_address: str) -> RequestHeaders:
        authorization = headers.get("authorization", "")
        if not authorization:
            raise Rejected(401, "Authorization is required")
        requester = headers.get("x-requester-address", "")
        if not requester:
            raise Rejected(400, "X-Requester-Address is required")
        try:
            timestamp = int(headers.get("x-timestamp", ""))
        except ValueError:
            timestamp = 0  # as the reference: unparsable is 0, which the window then refuses
        return cls(authorization, requester, timestamp, headers.get("x-transfer-address") or own_address)


def _seconds(value: int) -> int:
    return value if value > 0 else FALLBACK_WINDOW_SECONDS


def check_timestamp(timestamp_ns: int, block_time_ns: int, expiration_s: int, advance_s: int) -> None:
    """Raise Rejected(400) when the request is older than the window or too far in the future."""
    offset = block_time_ns - timestamp_ns
    if offset > _seconds(expiration_s) * _NS:
        raise Rejected(400, "Request timestamp is too old")
    if offset < -_seconds(advance_s) * _NS:
        raise Rejected(400, "Request timestamp is in the future")


def replay_window_blocks(expiration_s: int) -> int:
    return max(4, _seconds(expiration_s) * 2 // 4)


class ReplayGuard:
    """Authorization values seen per role, forgotten a few blocks after they were recorded."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Role, int]] = {}
        self._pruned_at = -1

    def __len__(self) -> int:
        return len(self._seen)

    def record(self, authorization: str, role: Role, height: int, window_blocks: int) -> None:
        """Record a use; Rejected(400) if `authorization` was already used in `role`."""
        if height != self._pruned_at:
            self._prune(height, window_blocks)
        roles, first = self._seen.get(authorization, (Role(0), height))
        if roles & role:
            where = "a transfer request" if role is Role.TRANSFER_AGENT else "an executor request"
            raise Rejected(400, f"AuthKey has already been used for {where}")
        self._seen[authorization] = (roles | role, first)

    def _prune(self, height: int, window_blocks: int) -> None:
        self._pruned_at = height
        expired = [key for key, (_, first) in self._seen.items() if height - first > window_blocks]
        for key in expired:
            del self._seen[key]
