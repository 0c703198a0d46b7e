"""Capped exponential backoff with jitter: the one retry rule of the project.

Components that sleep between attempts keep a :class:`Backoff`; components that schedule a retry
time instead (the outbox, the reconciler) call :func:`capped_delay` directly.
"""

from __future__ import annotations

import asyncio
import random


def capped_delay(failures: int, initial: float, maximum: float, *, factor: float = 2.0) -> float:
    """The delay after ``failures`` consecutive failures: ``initial * factor**(failures - 1)``, at most ``maximum``.

    ``failures`` <= 0 gives 0 (nothing failed, nothing to wait for).
    """
    if failures <= 0:
        return 0.0
    # Cap the exponent first: 2.0 ** 2000 overflows long before the cap would apply.
    exponent = min(failures - 1, 64)
    return float(min(maximum, initial * factor**exponent))


class Backoff:
    """Delays between attempts that double up to a cap, with jitter, remembering the last failure.

    Args:
        initial: the delay after the first failure, in seconds.
        maximum: the cap on any delay, in seconds.
        factor: how much each further failure multiplies the delay.
        jitter: the fraction of each delay drawn at random (0.5: a delay ``d`` becomes uniform in
            ``[d/2, d]``), so that many clients retrying the same dependency do not do so in step.
    """

    def __init__(self, initial: float = 0.2, maximum: float = 10.0, *, factor: float = 2.0,
                 jitter: float = 0.5) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter is a fraction in [0, 1]")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.failures = 0
        self.last_error = ""

    def failed(self, error: BaseException | str) -> float:
        """Record a failure and return how long to wait before the next attempt."""
        self.failures += 1
        self.last_error = error if isinstance(error, str) else (str(error) or repr(error))
        delay = capped_delay(self.failures, self.initial, self.maximum, factor=self.factor)
        return delay * random.uniform(1.0 - self.jitter, 1.0)

    def succeeded(self) -> None:
        """The dependency answered: the next failure starts from ``initial`` again."""
        self.failures = 0
        self.last_error = ""

    async def wait(self, error: BaseException | str) -> float:
        """Record a failure and sleep for its delay; returns the delay slept."""
        delay = self.failed(error)
        await asyncio.sleep(delay)
        return delay
