"""The one way tests wait: poll a condition, fail after a generous timeout (never an assertion about speed)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def wait_for(
    condition: Callable[[], object | Awaitable[object]], *, timeout: float = 10.0, what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> None:
    """Poll ``condition`` (sync or async) until truthy; exceptions in ``ignore`` count as "not yet"."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        except ignore:
            value = False
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
