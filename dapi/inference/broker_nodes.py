"""The broker's node locks as the executor's node pool (reference/inference.md §7.3; DESIGN.md §8 point 3).

A lease is one `lock_node` slot: the least busy own node that serves the model and is INFERENCE in
intent and in fact (during PoC that is a POC_SLOT node), below its `max_concurrent`. The executor holds
it until the answer has been fully proxied, then releases it exactly once.
"""

from __future__ import annotations

from dapi.broker import Broker
from dapi.broker.errors import NoNodeAvailable

__all__ = ["BrokerNodePool"]


class _Lease:
    def __init__(self, broker: Broker, node_id: str, url: str) -> None:
        self._broker = broker
        self._node_id = node_id
        self._url = url
        self._released = False

    @property
    def url(self) -> str:
        return self._url

    def release(self, ok: bool) -> None:
        if not self._released:
            self._released = True
            self._broker.release_node(self._node_id, ok)


class BrokerNodePool:
    """`lease(model)`: one slot on the least busy own node serving `model` now, or None."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def lease(self, model: str) -> _Lease | None:
        try:
            node = self._broker.lock_node(model)
        except NoNodeAvailable:
            return None
        return _Lease(self._broker, node.id, node.config.inference_url)
