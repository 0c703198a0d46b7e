"""The PoC stages this API node started its ML nodes for, persisted in data_dir.

A batch posted on a node's callback URL must name one of these stages (its start height and that
block's hash, as the InitDto gave them). The newest few are kept, not only the current one: a batch of
the stage that just ended may still be inside the chain's exchange window, and whether it is late is the
chain's decision. Persisted so that a node still generating across a daemon restart is still heard
before the restarted daemon has sent any InitDto.

A file that cannot be read is not fatal (unlike the NodeNum file): the daemon starts with no stage and
learns the current one at its next PoC init.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from dapi.logs import get_logger
from dapi.runtime.jsonfile import read_json, save_json

__all__ = ["FILE_NAME", "KEPT_STAGES", "PocStage", "PocStages"]

log = get_logger("dapi.broker.pocstages")

FILE_NAME = "broker_poc_stages.json"
KEPT_STAGES = 3
_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class PocStage:
    """The PoC stage ML nodes are initialised for: its start height and that block's hash (uppercase hex)."""

    height: int
    block_hash: str


class PocStages:
    """The newest :data:`KEPT_STAGES` PoC stages ML nodes were initialised for, by start height."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._stages: dict[int, str] = {}
        self._loaded = False
        self._lock = asyncio.Lock()

    def hash_of(self, height: int) -> str | None:
        """The start block hash of the stage starting at ``height``, if ML nodes were told about it."""
        return self._stages.get(height)

    def heights(self) -> list[int]:
        return sorted(self._stages)

    async def ensure_loaded(self) -> None:
        async with self._lock:
            if self._loaded:
                return
            stages = await asyncio.to_thread(_read, self.path)
            self._stages = {**stages, **self._stages}
            self._trim()
            self._loaded = True

    async def record(self, stage: PocStage) -> None:
        """Remember ``stage`` (before its InitDto goes out) and persist it; a known stage is a no-op."""
        if self._stages.get(stage.height) == stage.block_hash:
            return
        self._stages[stage.height] = stage.block_hash
        self._trim()
        async with self._lock:
            document = {"version": _FORMAT_VERSION,
                        "stages": [{"height": h, "block_hash": self._stages[h]} for h in sorted(self._stages)]}
            try:
                await save_json(self.path, document)
            except OSError as exc:
                # Kept in memory: batches are accepted until a restart, which would lose it.
                log.error("PoC stage not persisted", path=str(self.path), error=str(exc))

    def _trim(self) -> None:
        for height in sorted(self._stages)[:-KEPT_STAGES]:
            del self._stages[height]


def _read(path: Path) -> dict[int, str]:
    try:
        raw = read_json(path)
        return {} if raw is None else {int(s["height"]): str(s["block_hash"]) for s in raw["stages"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("PoC stage file not read; stages are learnt again at the next PoC init",
                    path=str(path), error=str(exc))
        return {}
