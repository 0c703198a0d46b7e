"""Event queries of CometBFT's websocket subscriptions: `key='value'` conditions joined by AND, and `key EXISTS`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MAX_QUERY_CONDITIONS", "EventQuery"]

MAX_QUERY_CONDITIONS = 10

_CONDITION = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(?:(=)\s*(?:'([^']*)'|\"([^\"]*)\"|([^\s']+))|(EXISTS))\s*$")


@dataclass(frozen=True, slots=True)
class EventQuery:
    """A CometBFT subscription query restricted to equality and EXISTS conditions joined by AND."""

    text: str
    conditions: tuple[tuple[str, str | None], ...]  # (key, value); None = EXISTS

    @classmethod
    def parse(cls, text: str) -> EventQuery:
        parts = re.split(r"\s+AND\s+", text.strip())
        if not text.strip() or len(parts) > MAX_QUERY_CONDITIONS:
            raise ValueError(f"failed to parse query {text!r}")
        conditions = []
        for part in parts:
            match = _CONDITION.match(part)
            if match is None:
                raise ValueError(f"failed to parse query {text!r}: unsupported condition {part.strip()!r}")
            key, _eq, quoted, dquoted, bare, exists = match.groups()
            value = None if exists else next(v for v in (quoted, dquoted, bare) if v is not None)
            conditions.append((key, value))
        return cls(text, tuple(conditions))

    def matches(self, events: Mapping[str, list[str]]) -> bool:
        for key, value in self.conditions:
            values = events.get(key)
            if values is None or (value is not None and value not in values):
                return False
        return True
