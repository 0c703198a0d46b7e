"""Weight preservation for nodes that served inference during PoC (plan 6.3).

A node with POC_SLOT=true in epoch N keeps serving during the PoC that forms epoch N+1, so it mines
nothing there; it would lose all its weight for N+1 if nothing carried it over.
"""

from __future__ import annotations

from collections.abc import Iterable

from dapi.devnet.schedule.records import ActiveParticipant

__all__ = ["preserved_node_weights"]


def preserved_node_weights(previous: Iterable[ActiveParticipant]) -> dict[str, dict[str, int]]:
    """participant address → {node_id: poc_weight} of its POC_SLOT=true nodes in epoch N.

    `previous` is epoch N's active participants (empty for the first epoch after genesis, which had no
    allocations). Every list is walked, the overflow list included; participants without such nodes
    are left out. The weight is copied as it was in epoch N, so it can carry over again while the node
    keeps being chosen to serve.
    """
    out: dict[str, dict[str, int]] = {}
    for participant in previous:
        kept: dict[str, int] = {}
        for node in participant.all_nodes:
            if node.is_active_during_poc:
                kept.setdefault(node.node_id, node.poc_weight)
        if kept:
            out[participant.index] = kept
    return out
