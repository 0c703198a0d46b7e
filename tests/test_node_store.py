"""Admin-made changes to the node list survive a restart; the config file is never rewritten."""

from __future__ import annotations

from pathlib import Path

from dapi.config import NodeConfig
from dapi.node_store import NodeStore


def node(node_id: str, host: str = "10.0.0.1") -> NodeConfig:
    return NodeConfig(id=node_id, host=host, inference_port=5000, poc_port=8080)


async def test_added_and_removed_nodes_apply_over_the_config_after_a_restart(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "nodes.json")
    await store.load()
    configured = [node("a"), node("b"), node("c")]
    assert [n.id for n in store.effective(configured)] == ["a", "b", "c"]
    await store.record_added([node("d"), node("b", host="10.9.9.9")])  # b re-added with another host
    await store.record_removed("c")

    again = NodeStore(tmp_path / "nodes.json")
    await again.load()
    effective = again.effective(configured)
    assert [n.id for n in effective] == ["a", "d", "b"]
    assert next(n for n in effective if n.id == "b").host == "10.9.9.9"
    await again.record_added([node("c")])  # an operator can bring a removed node back
    assert "c" in {n.id for n in again.effective(configured)}


async def test_an_unreadable_entry_is_skipped_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "nodes.json").write_text('{"added": [{"id": "", "host": "h"}, {"id": "ok", "host": "h", '
                                         '"inference_port": 1, "poc_port": 2}], "removed": []}')
    store = NodeStore(tmp_path / "nodes.json")
    await store.load()
    assert [n.id for n in store.effective([])] == ["ok"]
