"""The broker: ML node registry, epoch snapshots, phase commands, reconciliation, node workers.

See `Broker` (broker.py) for the API; reference/broker.md and DESIGN.md §5 for the behaviour.
"""

from dapi.broker.broker import Broker, BrokerMetrics, CommandResult, NodeHandle
from dapi.broker.chain_reader import ChainReader, QueryChainReader, TxSink
from dapi.broker.epoch_data import EpochCache
from dapi.broker.errors import (
    BrokerError,
    DuplicateNode,
    GovernanceUnavailable,
    InvalidModels,
    InvalidNodeConfig,
    NodeNotFound,
    NoNodeAvailable,
)
from dapi.broker.state import (
    AdminState,
    EpochState,
    Node,
    NodeResponse,
    NodeState,
    NodeStatus,
    PocStatus,
    ReconcileInfo,
    node_response_json,
)

__all__ = [
    "AdminState",
    "Broker",
    "BrokerError",
    "BrokerMetrics",
    "ChainReader",
    "CommandResult",
    "DuplicateNode",
    "EpochCache",
    "EpochState",
    "GovernanceUnavailable",
    "InvalidModels",
    "InvalidNodeConfig",
    "NoNodeAvailable",
    "Node",
    "NodeHandle",
    "NodeNotFound",
    "NodeResponse",
    "NodeState",
    "NodeStatus",
    "PocStatus",
    "QueryChainReader",
    "ReconcileInfo",
    "TxSink",
    "node_response_json",
]
