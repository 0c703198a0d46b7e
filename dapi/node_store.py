"""Nodes the operator added or removed through the admin API, kept in ``data_dir`` across restarts.

The config file stays the operator's own (we never rewrite it, unlike the reference); this file
records the differences the admin API made to it: nodes added, and config nodes removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dapi.config import NodeConfig
from dapi.logs import get_logger
from dapi.runtime.jsonfile import load_json, save_json

log = get_logger(__name__)


class NodeStore:
    """The admin API's changes to the configured node list (nodes added, config nodes removed), saved as JSON.

    Args:
        path: the JSON file (``nodes.json`` in ``data_dir``); a missing file means no changes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.added: dict[str, NodeConfig] = {}
        self.removed: set[str] = set()

    async def load(self) -> None:
        doc = await load_json(self.path)
        if not isinstance(doc, dict):
            return
        for raw in doc.get("added", []):
            try:
                node = NodeConfig.model_validate(raw)
            except ValidationError as exc:
                log.error("a stored admin-added node does not validate; skipped", path=str(self.path),
                          error=str(exc).splitlines()[0])
                continue
            self.added[node.id] = node
        self.removed = {str(i) for i in doc.get("removed", [])}

    async def _save(self) -> None:
        doc: dict[str, Any] = {
            "added": [n.model_dump(mode="json") for n in self.added.values()],
            "removed": sorted(self.removed),
        }
        await save_json(self.path, doc)

    def effective(self, configured: list[NodeConfig]) -> list[NodeConfig]:
        """Config nodes in config order (minus removed ones), then admin-added nodes in the order added."""
        nodes = [n for n in configured if n.id not in self.removed and n.id not in self.added]
        return nodes + list(self.added.values())

    async def record_added(self, nodes: list[NodeConfig]) -> None:
        for node in nodes:
            self.added[node.id] = node
            self.removed.discard(node.id)
        await self._save()

    async def record_removed(self, node_id: str) -> None:
        self.added.pop(node_id, None)
        self.removed.add(node_id)
        await self._save()
