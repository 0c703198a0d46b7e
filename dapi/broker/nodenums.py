"""NodeNum assignments, persisted in data_dir (DESIGN.md §5 fix 10).

An ML node still generating under its number after a daemon restart keeps its attribution: the same
node id gets the same number again. A number is never given to another id, not even after its node
was removed, and a rejected registration consumes none (numbers are assigned only after validation).
The file is small JSON, replaced atomically (temp file, fsync, rename) off the event loop.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from dapi.broker.errors import BrokerError
from dapi.runtime.jsonfile import write_json_atomic

__all__ = ["FILE_NAME", "NodeNumStoreError", "NodeNumbers"]

FILE_NAME = "broker_node_nums.json"
_FORMAT_VERSION = 1


class NodeNumStoreError(BrokerError):
    """The persisted NodeNum file cannot be read; starting anyway could hand out numbers twice."""


class NodeNumbers:
    """The NodeNum of every node id ever registered, persisted in ``data_dir`` so an id keeps its number."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._nums: dict[str, int] = {}
        self._max = 0
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._save_lock = asyncio.Lock()
        self._dirty = False

    @property
    def highest(self) -> int:
        return self._max

    def number_of(self, node_id: str) -> int | None:
        return self._nums.get(node_id)

    async def ensure_loaded(self) -> None:
        async with self._load_lock:
            if self._loaded:
                return
            data = await asyncio.to_thread(_read, self.path)
            if data is not None:
                self._nums, self._max = data
            self._loaded = True

    def assign(self, node_id: str) -> int:
        """The id's number: its old one if it ever had one, else the next after the highest ever given."""
        if not self._loaded:
            raise RuntimeError("NodeNumbers.assign before ensure_loaded")
        num = self._nums.get(node_id)
        if num is None:
            self._max += 1
            num = self._max
            self._nums[node_id] = num
            self._dirty = True
        return num

    async def save(self) -> None:
        async with self._save_lock:
            if not self._dirty:
                return
            self._dirty = False
            payload = {"version": _FORMAT_VERSION, "highest": self._max, "nodes": dict(self._nums)}
            try:
                await asyncio.to_thread(write_json_atomic, self.path, payload)
            except BaseException:
                self._dirty = True
                raise


def _read(path: Path) -> tuple[dict[str, int], int] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NodeNumStoreError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        raw = json.loads(text)
        nodes = raw["nodes"]
        nums = {str(k): int(v) for k, v in nodes.items()}
        highest = max([int(raw.get("highest", 0)), *nums.values()], default=0)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NodeNumStoreError(f"{path} is not a NodeNum file ({exc}); fix or remove it") from exc
    return nums, highest
