"""Graceful stop on SIGINT/SIGTERM for the long-running commands, as uvicorn does it.

The first signal asks for a graceful stop (sets the event the command waits on); a second one means
the operator will not wait, and the process exits at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

from dapi.logs import get_logger

log = get_logger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORCED_EXIT_CODE = 130


def install_stop_signals(stop: asyncio.Event, *, force_exit: Callable[[int], object] = os._exit) -> Callable[[], None]:
    """Make SIGINT/SIGTERM set ``stop``; a signal arriving after that calls ``force_exit(130)``.

    Returns a function that removes the handlers again. Must be called from the running loop; where
    signals cannot be handled (not the main thread) nothing is installed and the event is left to others.
    """
    loop = asyncio.get_running_loop()

    def handle(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second stop signal: exiting now", signal=sig.name)
            force_exit(FORCED_EXIT_CODE)
            return
        log.info("stop signal: stopping gracefully (send it again to exit at once)", signal=sig.name)
        stop.set()

    installed: list[signal.Signals] = []
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, handle, sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signal support
            continue
        installed.append(sig)

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove
