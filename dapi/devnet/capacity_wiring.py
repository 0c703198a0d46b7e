"""Serving capacity from the chain: each simulated ML node serves its `MLNodeInfo.throughput` (DESIGN.md §6.1).

When an epoch becomes effective, the runner gives every simulated node of a participant the throughput the
epoch's model sub-groups list for it, in tokens per block, as a rate (`SimNode.set_throughput`). A node the
epoch does not list with a positive throughput (not a member, overflow, no weight) keeps its current rate:
the chain routes nothing to it, so its rate is not observed through the network.
"""

from __future__ import annotations

from dapi.devnet.ledger import Ledger
from dapi.devnet.mlnode import SimMLNodeServer

__all__ = ["apply_epoch_throughput", "epoch_throughput"]


def epoch_throughput(ledger: Ledger, epoch_index: int, address: str) -> dict[str, int]:
    """Node id -> `MLNodeInfo.throughput` of `address`'s nodes in epoch `epoch_index` (empty if not a member)."""
    for participant in ledger.active_participants(epoch_index):
        if participant.index == address:
            return {node.node_id: node.throughput for node in participant.all_nodes}
    return {}


def apply_epoch_throughput(
    ledger: Ledger, epoch_index: int, address: str, server: SimMLNodeServer, block_time: float, *, prefix: str = ""
) -> dict[str, int]:
    """Set the rate of `server`'s nodes to `address`'s chain figures; returns the figures applied.

    The sim node of chain node id `n` is `server`'s node `prefix + n`.
    """
    applied: dict[str, int] = {}
    for node_id, throughput in epoch_throughput(ledger, epoch_index, address).items():
        node = server.find_node(prefix + node_id)
        if node is None or throughput <= 0:
            continue
        node.set_throughput(tokens_per_block=throughput, block_time=block_time)
        applied[node_id] = throughput
    return applied
