"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from log_capture import LogLines, capture_logs


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """Every log line of the test, parsed (see log_capture)."""
    with capture_logs() as lines:
        yield lines
