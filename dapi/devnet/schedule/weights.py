"""PoC weight per ML node, the legacy-batch spread, and the validation majority (plan 5.x).

A participant's PoC weight is the number of nonces it mined; since plan 5.1 each batch says which
ML node mined it, so weight is tracked per node. Batches from older API nodes carry no node id and
are spread over the participant's hardware nodes so that node weights still add up to the total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from types import MappingProxyType

from dapi.devnet.schedule.records import LEGACY_NODE_ID, HardwareNode, PoCBatch, PoCValidation

__all__ = [
    "distribute_legacy_weight",
    "is_poc_validated",
    "nonce_weights_by_node",
    "participant_node_weights",
]

_NOTHING_PRESERVED: Mapping[str, int] = MappingProxyType({})


def nonce_weights_by_node(batches: Iterable[PoCBatch]) -> dict[str, int]:
    """Weight per node_id = number of nonces in its batches, in node_id order ("" = legacy, first).

    Nonces are not de-duplicated (as on the chain); a re-sent batch_id is replaced by the batch
    store before it gets here.
    """
    weights: dict[str, int] = {}
    for batch in batches:
        weights[batch.node_id] = weights.get(batch.node_id, 0) + len(batch.nonces)
    return {node_id: weights[node_id] for node_id in sorted(weights)}


def distribute_legacy_weight(
    weights: Mapping[str, int],
    hardware_nodes: Sequence[HardwareNode],
    preserved_node_ids: Set[str] = frozenset(),
) -> dict[str, int]:
    """Spread the legacy ("") weight evenly over the non-preserved hardware nodes.

    The first `total mod n` of them in local_id order get one more, so the node weights sum exactly to
    the input total (the fixed plan 5.11; the reference over-allocates). Every non-preserved hardware
    node gets an entry, zero shares included. Preserved nodes get nothing: their weight is the one
    they carried over. With no node to spread over, the legacy entry stays as it is, so no weight is lost.
    """
    out = dict(weights)
    legacy = out.get(LEGACY_NODE_ID)
    recipients = [
        n.local_id for n in sorted(hardware_nodes, key=lambda n: n.local_id) if n.local_id not in preserved_node_ids
    ]
    if legacy is None or not recipients:
        return out
    del out[LEGACY_NODE_ID]
    per_node, remainder = divmod(legacy, len(recipients))
    for position, node_id in enumerate(recipients):
        share = per_node + (1 if position < remainder else 0)
        out[node_id] = out.get(node_id, 0) + share
    return out


def participant_node_weights(
    mined: Mapping[str, int],
    hardware_nodes: Sequence[HardwareNode],
    preserved: Mapping[str, int] = _NOTHING_PRESERVED,
) -> dict[str, int]:
    """A participant's node weights for the upcoming epoch, in the order model lists will use.

    `mined` is the accepted PoC weight per node_id, `preserved` the weights carried over for nodes
    that served inference during this PoC (plan 6.3): those override anything the node mined, since a
    batch from a POC_SLOT node is ignored. Every hardware node appears, a node without weight with 0
    (it will mine at the next PoC). Order: hardware nodes by local_id, then any other node id
    (unknown ids, a legacy entry with nowhere to go, preserved nodes no longer declared) by id.
    """
    weights = {node_id: w for node_id, w in mined.items() if node_id not in preserved}
    weights.update(preserved)
    weights = distribute_legacy_weight(weights, hardware_nodes, preserved.keys())
    declared = sorted({n.local_id for n in hardware_nodes})
    ordered = {node_id: weights.get(node_id, 0) for node_id in declared}
    for node_id in sorted(weights):
        ordered.setdefault(node_id, weights[node_id])
    return ordered


def is_poc_validated(validations: Iterable[PoCValidation], validator_weights: Mapping[str, int]) -> bool:
    """The validation majority: the weight of current validators voting "valid" is strictly above half.

    Only votes of current validators count, the last vote of each validator wins, negative weights
    count as 0, and a participant without any vote from a current validator is not validated.
    `2 * valid > total` is the chain's `valid > floor(total / 2)` without the rounding.
    """
    total = sum(max(w, 0) for w in validator_weights.values())
    fraud_by_validator: dict[str, bool] = {}
    for vote in validations:
        if vote.validator_participant_address in validator_weights:
            fraud_by_validator[vote.validator_participant_address] = vote.fraud_detected
    if not fraud_by_validator:
        return False
    valid = sum(max(validator_weights[v], 0) for v, fraud in fraud_by_validator.items() if not fraud)
    return 2 * valid > total
