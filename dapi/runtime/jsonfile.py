"""Small persisted JSON documents in ``data_dir``: atomic replace, written off the event loop, private (0600)."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dapi.runtime.files import PRIVATE_FILE, private_dir


def write_json_atomic(path: Path, document: Any, *, indent: int = 2) -> None:
    """Write to a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder.

    The file is 0600 whatever the umask: these documents hold node secrets, seeds and the like.
    """
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=indent, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the directory entry is flushed.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


async def save_json(path: Path, document: Any) -> None:
    await asyncio.to_thread(write_json_atomic, path, document)


async def load_json(path: Path) -> Any | None:
    return await asyncio.to_thread(read_json, path)
