"""NodeNum assignments and callback secrets, persisted in data_dir (DESIGN.md §5 fix 10, §4.5, §7).

An ML node still generating under its number after a daemon restart keeps its attribution: the same
node id gets the same number again. A number is never given to another id, not even after its node
was removed, and a rejected registration consumes none (numbers are assigned only after validation).

Each node also gets a random secret when it is first registered: its callback URL is
``<poc_callback_url>/n/<secret>/v1/poc-batches``, and only a batch posted there is attributed to it.
The secret persists with the number (a node generating across a restart still reaches us) and is
revoked when the node is removed (re-adding the id makes a new one).

The file is small JSON, private to the daemon's user (0600), replaced atomically (temp file, fsync,
rename) off the event loop. Version 1 files (numbers only) are read; their nodes get secrets.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Collection
from pathlib import Path

from dapi.broker.errors import BrokerError
from dapi.runtime.jsonfile import write_json_atomic

__all__ = ["FILE_NAME", "NodeNumStoreError", "NodeNumbers", "new_callback_secret"]

FILE_NAME = "broker_node_nums.json"
_FORMAT_VERSION = 2
_SECRET_BYTES = 24  # 32 URL-safe characters


def new_callback_secret() -> str:
    return secrets.token_urlsafe(_SECRET_BYTES)


class NodeNumStoreError(BrokerError):
    """The persisted NodeNum file cannot be read; starting anyway could hand out numbers twice."""


class NodeNumbers:
    """The NodeNum of every node id ever registered and the callback secret of each registered one.

    Persisted in ``data_dir`` so an id keeps its number and its callback URL across restarts.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._nums: dict[str, int] = {}
        self._max = 0
        self._secrets: dict[str, str] = {}  # node id -> secret
        self._owners: dict[str, str] = {}  # secret -> node id
        self.pruned = False  # revoke_all_but ran: ids not registered are no longer owners
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._save_lock = asyncio.Lock()
        self._dirty = False

    @property
    def highest(self) -> int:
        return self._max

    def number_of(self, node_id: str) -> int | None:
        return self._nums.get(node_id)

    def owner_of(self, secret: str) -> str | None:
        """The node id whose callback secret this is (a dict lookup: no timing to learn a prefix from)."""
        return self._owners.get(secret)

    async def ensure_loaded(self) -> None:
        async with self._load_lock:
            if self._loaded:
                return
            data = await asyncio.to_thread(_read, self.path)
            if data is not None:
                self._nums, self._max, self._secrets = data
                self._owners = {secret: node_id for node_id, secret in self._secrets.items()}
            self._loaded = True

    def assign(self, node_id: str) -> tuple[int, str]:
        """The id's number (its old one if it ever had one, else the next after the highest ever given) and
        its callback secret (a new one unless it has one)."""
        if not self._loaded:
            raise RuntimeError("NodeNumbers.assign before ensure_loaded")
        num = self._nums.get(node_id)
        if num is None:
            self._max += 1
            num = self._max
            self._nums[node_id] = num
            self._dirty = True
        secret = self._secrets.get(node_id)
        if secret is None:
            secret = new_callback_secret()
            self._secrets[node_id] = secret
            self._owners[secret] = node_id
            self._dirty = True
        return num, secret

    def revoke_secret(self, node_id: str) -> bool:
        """Forget the id's callback secret (its node was removed); the number stays the id's."""
        secret = self._secrets.pop(node_id, None)
        if secret is None:
            return False
        self._owners.pop(secret, None)
        self._dirty = True
        return True

    def revoke_all_but(self, keep: Collection[str]) -> list[str]:
        """Revoke the secret of every id not in ``keep``; from now on an owner's secret names it only while it
        is registered (``pruned``). Returns the ids revoked."""
        dropped = [node_id for node_id in self._secrets if node_id not in keep]
        for node_id in dropped:
            self.revoke_secret(node_id)
        self.pruned = True
        return dropped

    async def save(self) -> None:
        async with self._save_lock:
            if not self._dirty:
                return
            self._dirty = False
            payload = {"version": _FORMAT_VERSION, "highest": self._max, "nodes": dict(self._nums),
                       "secrets": dict(self._secrets)}
            try:
                await asyncio.to_thread(write_json_atomic, self.path, payload)
            except BaseException:
                self._dirty = True
                raise


def _read(path: Path) -> tuple[dict[str, int], int, dict[str, str]] | None:
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
        secrets_by_id = raw.get("secrets") or {}
        if not all(isinstance(v, str) and v for v in secrets_by_id.values()):
            raise ValueError("a secret is not a non-empty string")
        found = {str(k): v for k, v in secrets_by_id.items()}
        if len(set(found.values())) != len(found):
            raise ValueError("two nodes share a secret")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NodeNumStoreError(f"{path} is not a NodeNum file ({exc}); fix or remove it") from exc
    return nums, highest, found
