"""A private sqlite file worked on one dedicated thread: the outbox's and the validation queue's shared plumbing.

:func:`open_private_db` opens the file the way every durable store of the daemon does (0600, the -wal and
-shm files too; WAL; ``synchronous=FULL``, so a commit is on disk when it returns). :class:`DbThread` runs
the store's synchronous methods on its own single thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from dapi.runtime.files import private_dir, private_file

__all__ = ["DbThread", "open_private_db"]

T = TypeVar("T")


def open_private_db(path: Path, schema: str) -> sqlite3.Connection:
    """Open (or create) ``path`` private to the daemon's user, in WAL mode with full sync, and apply ``schema``."""
    private_dir(path.parent)
    # SQLite creates the -wal and -shm files with the database file's mode, so making the database 0600
    # before it is opened covers all three; leftovers of an older run are tightened too.
    private_file(path)
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if extra.exists():
            private_file(extra)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


class DbThread:
    """One thread for one sqlite store: :meth:`run` awaits a synchronous call made on that thread.

    Args:
        name: the thread's name prefix (``outbox-db``).
        what: the store's name in the error while it is not open (``outbox``: "the outbox is not open").
        closed: the exception :meth:`run` raises while the thread is not open.
    """

    def __init__(self, name: str, what: str, closed: type[Exception] = RuntimeError) -> None:
        self.name = name
        self.what = what
        self._closed = closed
        self._executor: ThreadPoolExecutor | None = None

    def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise self._closed(f"the {self.what} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Wait for what is running, then end the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
