"""Broker errors, grouped by what the caller can do about them.

BrokerError                 every refusal of the broker
├── NodeNotFound            no node with that id (admin API: 404)
├── DuplicateNode           the id is already registered; the existing node is untouched (409)
├── InvalidModels           the node lists models that are not governance models (400)
├── InvalidNodeConfig       the node's address does not make a URL (400)
├── GovernanceUnavailable   the governance models could not be read from the chain (retriable)
└── NoNodeAvailable         no node can take an inference request for that model right now
"""

from __future__ import annotations

from collections.abc import Iterable


class BrokerError(Exception):
    """The broker refused a request; the message names the node or models involved."""

    retriable: bool = False


class NodeNotFound(BrokerError):
    """No node is registered under that id (admin API: 404)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(f"node not found: {node_id}")


class DuplicateNode(BrokerError):
    """The id is already registered; the existing node is left as it was (409)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(f"node {node_id!r} is already registered")


class InvalidModels(BrokerError):
    """The node lists models that are not governance models; ``bad_ids`` names them (400)."""

    def __init__(self, node_id: str, bad_ids: Iterable[str]) -> None:
        self.node_id = node_id
        self.bad_ids = tuple(sorted(bad_ids))
        super().__init__(f"node {node_id!r}: not governance models: {', '.join(self.bad_ids)}")


class InvalidNodeConfig(BrokerError):
    """The node's host, ports and segments do not make a usable URL (400)."""

    def __init__(self, node_id: str, problem: str) -> None:
        self.node_id = node_id
        super().__init__(f"node {node_id!r}: {problem}")


class GovernanceUnavailable(BrokerError):
    """Registration needs the chain's governance models and the query failed; try again later."""

    retriable = True

    def __init__(self, node_id: str, cause: Exception) -> None:
        self.node_id = node_id
        super().__init__(f"node {node_id!r}: cannot read governance models from the chain: {cause}")


class NoNodeAvailable(BrokerError):
    """No node serving that model (at that version) can take another inference request right now."""

    def __init__(self, model: str, version: str = "") -> None:
        self.model = model
        self.version = version
        suffix = f" (version {version!r})" if version else ""
        super().__init__(f"no nodes available for inference of model {model!r}{suffix}")
