"""The daemon's log as it would reach stderr (one JSON object per line, rendered by dapi.logs), in memory."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog

from dapi.logs import configure_logging


@dataclass
class LogLines:
    stream: io.StringIO

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line.strip()]

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The lines with this event text whose fields include ``fields``."""
        return [r for r in self.all() if r.get("event") == event and all(r.get(k) == v for k, v in fields.items())]


@contextmanager
def capture_logs() -> Iterator[LogLines]:
    stream = io.StringIO()
    configure_logging({"DAPI_LOG_LEVEL": "INFO"}, stream=stream)
    # The modules' loggers must not keep this configuration once the capture is over.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield LogLines(stream)
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        root = logging.getLogger()
        root.handlers.clear()
        root.setLevel(logging.WARNING)
