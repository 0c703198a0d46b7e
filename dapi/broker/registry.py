"""The registered nodes: each node's config, state, ML node client and worker, in registration order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from dapi.broker.state import Node, NodeState, NodeStatus, PocStatus
from dapi.broker.worker import NodeWorker
from dapi.mlnodeclient import MLNodeClient

__all__ = ["NodeEntry", "NodeRegistry"]


@dataclass(eq=False, slots=True)
class NodeEntry:
    """Everything the broker holds for one registered node, with the bookkeeping of its retries and polls."""

    node: Node
    state: NodeState
    client: MLNodeClient
    worker: NodeWorker
    # The secret in the node's own callback URL (DESIGN.md §4.5); never shown in the node's JSON.
    callback_secret: str = field(repr=False)
    # Consecutive failed jobs and when the next attempt may start (monotonic clock), for the backoff.
    failures: int = 0
    retry_at: float = 0.0
    # Bumped whenever a job result is applied, so a status poll that started before it knows it is stale.
    version: int = 0
    # When the status poller last looked at the node (monotonic clock); None: never.
    polled_at: float | None = None
    # Per phase command: the last decision logged for this node (latest epoch, status, PoC status, reason).
    decisions: dict[str, tuple[int, NodeStatus, PocStatus, str]] = field(default_factory=dict)


class NodeRegistry:
    """The registered nodes by id and by NodeNum, iterated in registration order."""

    def __init__(self) -> None:
        self._entries: dict[str, NodeEntry] = {}
        # Every PoC batch callback maps a node number to its node: a lookup, not a scan of every node.
        self._by_num: dict[int, NodeEntry] = {}

    def __iter__(self) -> Iterator[NodeEntry]:
        # A copy: callers await inside loops, and a registration meanwhile must not break the iteration.
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    def get(self, node_id: str) -> NodeEntry | None:
        return self._entries.get(node_id)

    def is_current(self, entry: NodeEntry) -> bool:
        """Whether `entry` is still the registered one for its id (not removed or replaced meanwhile)."""
        return self._entries.get(entry.node.id) is entry

    def add(self, entry: NodeEntry) -> None:
        if entry.node.id in self._entries:
            raise ValueError(f"node {entry.node.id!r} is already registered")
        self._entries[entry.node.id] = entry
        self._by_num[entry.node.node_num] = entry

    def pop(self, node_id: str) -> NodeEntry | None:
        entry = self._entries.pop(node_id, None)
        if entry is not None and self._by_num.get(entry.node.node_num) is entry:
            del self._by_num[entry.node.node_num]
        return entry

    def by_num(self, node_num: int) -> NodeEntry | None:
        return self._by_num.get(node_num)

    def highest_node_num(self) -> int:
        return max((e.node.node_num for e in self._entries.values()), default=0)
