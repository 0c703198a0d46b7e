"""Background tasks with an owner: started by a component, logged if they crash, cancelled on stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from dapi.logs import get_logger
from dapi.runtime.backoff import Backoff

log = get_logger(__name__)

T = TypeVar("T")


class TaskOwner:
    """The background tasks of one component.

    Every task started through :meth:`spawn` is remembered until it ends; a task that ends with an
    exception is logged with its name and traceback at that moment (an unobserved task exception would
    otherwise surface only at garbage collection, or never). :meth:`stop` cancels what is still running
    and waits for it, so a component's ``stop()`` leaves nothing behind.

    Args:
        owner: the component's name, bound into the crash log line.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self.crashes = 0

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def supervise(self, run: Callable[[], Coroutine[Any, Any, None]], name: str, *,
                  backoff: Backoff | None = None) -> asyncio.Task[None]:
        """Run ``run()`` as a task that is started again (after a backoff) whenever it crashes.

        For loops whose silent death would stop delivery (the outbox's sender, say); a loop that
        returns normally is not restarted.
        """
        retry = backoff or Backoff(1.0, 30.0)

        async def supervised() -> None:
            while True:
                try:
                    await run()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.crashes += 1
                    delay = retry.failed(exc)
                    log.exception("background task crashed; restarting it", owner=self.owner, task=name,
                                  retry_in=round(delay, 2))
                    await asyncio.sleep(delay)

        return self.spawn(supervised(), name)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.crashes += 1
            log.error("background task crashed", owner=self.owner, task=task.get_name(),
                      exc_info=(type(exc), exc, exc.__traceback__))

    @property
    def running(self) -> int:
        return len(self._tasks)

    def __contains__(self, name: object) -> bool:
        return any(task.get_name() == name for task in self._tasks)

    async def stop(self) -> None:
        """Cancel every running task and wait until all have ended."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
