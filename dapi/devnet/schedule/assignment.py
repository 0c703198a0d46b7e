"""Model assignment and POC_SLOT timeslots (plan 5.9, 6.2.1, 6.2.2; DESIGN.md §6).

Each ML node serves exactly one model in an epoch, and POC_SLOT=true marks the nodes that keep
serving it during the next PoC instead of mining. The seed plan's rule is weight-based: per
participant, just under half of the PoC weight keeps serving. The reference chain's node-count rule
is kept as the `half-nodes` policy for comparison.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from dapi.devnet.schedule.models import ModelRegistry
from dapi.devnet.schedule.records import HardwareNode, MLNodeInfo, ModelMLNodes

__all__ = [
    "ModelAssignment",
    "PocSlotPolicy",
    "apply_half_nodes_rule",
    "apply_none_rule",
    "apply_poc_slot_policy",
    "apply_weight_rule",
    "assign_models",
    "draw_below",
    "model_visit_order",
    "seeded_permutation",
]


class PocSlotPolicy(StrEnum):
    """How formation picks the nodes that keep serving inference (POC_SLOT=true) during the next PoC."""

    WEIGHT = "weight"  # the seed plan (DESIGN.md §6): weight-based, with carry across models
    HALF_NODES = "half-nodes"  # the reference chain: floor(n/2) of n nodes per model keep serving
    # DESIGN.md §6.1: the weight rule at formation, then the pre-PoC selection (`selection`) rewrites the
    # flags from measured demand a few blocks before the PoC.
    DEMAND = "demand"
    NONE = "none"  # every node mines: the network before the schedule plan, for comparison


@dataclass(frozen=True, slots=True)
class ModelAssignment:
    """A participant's `models` and `ml_nodes` (same layout as ActiveParticipant): `models[i]` ↔
    `ml_nodes[i]`, plus one overflow list at index len(models) when some node has no governance model."""

    models: tuple[str, ...]
    ml_nodes: tuple[ModelMLNodes, ...]

    def nodes_of(self, model_id: str) -> tuple[MLNodeInfo, ...]:
        return self.ml_nodes[self.models.index(model_id)].ml_nodes

    @property
    def overflow(self) -> tuple[MLNodeInfo, ...]:
        return self.ml_nodes[len(self.models)].ml_nodes if len(self.ml_nodes) > len(self.models) else ()


def assign_models(
    node_weights: Mapping[str, int],
    hardware_nodes: Sequence[HardwareNode],
    registry: ModelRegistry,
) -> ModelAssignment:
    """Put every node in exactly one model list: the first model of its own hardware model list that
    is a governance model (plan 6.2.1; the reference instead takes the first governance model in id
    order that the node supports).

    Assigned nodes start as [PRE_POC_SLOT=true, POC_SLOT=true], before the POC_SLOT policy decides who
    mines; overflow nodes (no governance model, or no hardware declaration) get [true, false], since
    with nothing to serve they can only mine. Models are listed in id order, nodes in `node_weights`
    order. throughput = poc_weight x the model's throughput_per_nonce (plan 5.3, 11.2); 0 in overflow.
    """
    declared = {node.local_id: node for node in hardware_nodes}
    lists: dict[str, list[MLNodeInfo]] = {}
    overflow: list[MLNodeInfo] = []
    for node_id, weight in node_weights.items():
        hw = declared.get(node_id)
        model = None
        if hw is not None:
            model_id = next((m for m in hw.models if registry.is_valid_governance_model(m)), None)
            model = registry.get_governance_model(model_id) if model_id is not None else None
        if model is None:
            overflow.append(MLNodeInfo(node_id=node_id, poc_weight=weight, timeslot_allocation=(True, False)))
            continue
        lists.setdefault(model.id, []).append(
            MLNodeInfo(
                node_id=node_id,
                poc_weight=weight,
                throughput=weight * model.throughput_per_nonce,
                timeslot_allocation=(True, True),
            )
        )
    models = tuple(sorted(lists))
    groups = [ModelMLNodes(ml_nodes=tuple(lists[m])) for m in models]
    if overflow:
        groups.append(ModelMLNodes(ml_nodes=tuple(overflow)))
    return ModelAssignment(models, tuple(groups))


def draw_below(seed: bytes, counter: int, bound: int) -> tuple[int, int]:
    """A uniform integer in [0, bound) from a SHA-256 counter stream; returns (value, next counter).

    Rejection of the top partial range keeps it unbiased. Unlike `random.Random`, whose shuffle may
    change between Python versions, this stream is fixed by its definition.
    """
    span = 1 << 64
    limit = span - span % bound
    while True:
        draw = int.from_bytes(hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()[:8], "big")
        counter += 1
        if draw < limit:
            return draw % bound, counter


def seeded_permutation(seed: bytes, n: int) -> tuple[int, ...]:
    """A Fisher-Yates shuffle of range(n) driven by `seed` (deterministic, platform independent)."""
    order = list(range(n))
    counter = 0
    for i in range(n - 1, 0, -1):
        j, counter = draw_below(seed, counter, i + 1)
        order[i], order[j] = order[j], order[i]
    return tuple(order)


def model_visit_order(epoch_index: int, participant_address: str, model_ids: Sequence[str]) -> tuple[str, ...]:
    """The order in which the weight rule visits a participant's models (plan 6.2.2).

    The ids are sorted first, so the order depends only on the set of models, then shuffled with the
    seed sha256(f"{epoch_index}:{participant_address}") (DESIGN.md §6). A different order each epoch
    means the carry favours a different model each time.
    """
    ids = sorted(model_ids)
    seed = hashlib.sha256(f"{epoch_index}:{participant_address}".encode()).digest()
    return tuple(ids[i] for i in seeded_permutation(seed, len(ids)))


def _replace_list(assignment: ModelAssignment, index: int, nodes: Sequence[MLNodeInfo]) -> ModelAssignment:
    groups = list(assignment.ml_nodes)
    groups[index] = ModelMLNodes(ml_nodes=tuple(nodes))
    return ModelAssignment(assignment.models, tuple(groups))


def apply_weight_rule(assignment: ModelAssignment, *, epoch_index: int, participant_address: str) -> ModelAssignment:
    """The 50% rule, weight-based (DESIGN.md §6).

    Models in `model_visit_order`, carry starting at 0. In model m (nodes in list order, T = total
    positive weight) nodes are switched to POC_SLOT=false one by one until switched + carry > T/2,
    strictly: serving exactly half is not "below half", so a tie switches one more node. The overshoot
    switched + carry - T/2 is carried to the next model, where it lets more weight keep serving.
    Zero-weight nodes always mine (they have no weight to lose and must earn some) and are not in T.
    Per participant this leaves serving weight strictly below half of the assigned weight and above
    half minus the largest node's weight. Work is in doubled units so halves of odd totals stay exact.
    """
    carry2 = 0
    for model_id in model_visit_order(epoch_index, participant_address, assignment.models):
        index = assignment.models.index(model_id)
        nodes = assignment.ml_nodes[index].ml_nodes
        total = sum(node.poc_weight for node in nodes if node.poc_weight > 0)
        switched2 = 0
        decided: list[MLNodeInfo] = []
        for node in nodes:
            if node.poc_weight <= 0:
                decided.append(node.with_poc_slot(False))
            elif switched2 + carry2 > total:
                decided.append(node.with_poc_slot(True))
            else:
                switched2 += 2 * node.poc_weight
                decided.append(node.with_poc_slot(False))
        carry2 = switched2 + carry2 - total
        assignment = _replace_list(assignment, index, decided)
    return assignment


def apply_half_nodes_rule(
    assignment: ModelAssignment, *, epoch_index: int, participant_address: str
) -> ModelAssignment:
    """The reference chain's rule: in each model, floor(n/2) of its n nodes keep serving.

    Which ones is a seeded shuffle (seed sha256(f"{epoch_index}_{participant_address}_{model_id}"), as
    the reference's seed string; the shuffle itself is ours, not Go's math/rand). Weight is ignored,
    so a participant with one node per model never serves during PoC.
    """
    for index, model_id in enumerate(assignment.models):
        nodes = assignment.ml_nodes[index].ml_nodes
        seed = hashlib.sha256(f"{epoch_index}_{participant_address}_{model_id}".encode()).digest()
        serving = set(seeded_permutation(seed, len(nodes))[: len(nodes) // 2])
        decided = [node.with_poc_slot(position in serving) for position, node in enumerate(nodes)]
        assignment = _replace_list(assignment, index, decided)
    return assignment


def apply_poc_slot_policy(
    assignment: ModelAssignment,
    *,
    epoch_index: int,
    participant_address: str,
    policy: PocSlotPolicy | str = PocSlotPolicy.WEIGHT,
) -> ModelAssignment:
    # PocSlotPolicy(...) also accepts the plain config string ("weight", "half-nodes", "demand", "none").
    rule = _RULES[PocSlotPolicy(policy)]
    return rule(assignment, epoch_index=epoch_index, participant_address=participant_address)


def apply_none_rule(assignment: ModelAssignment, *, epoch_index: int, participant_address: str) -> ModelAssignment:
    """No node keeps serving during PoC: every node mines (POC_SLOT=false), as before the schedule plan."""
    for index in range(len(assignment.models)):
        nodes = assignment.ml_nodes[index].ml_nodes
        assignment = _replace_list(assignment, index, [node.with_poc_slot(False) for node in nodes])
    return assignment


_RULES = {
    PocSlotPolicy.WEIGHT: apply_weight_rule,
    PocSlotPolicy.HALF_NODES: apply_half_nodes_rule,
    PocSlotPolicy.NONE: apply_none_rule,
    # At formation `demand` is the weight rule; its own choice is made later, before the PoC.
    PocSlotPolicy.DEMAND: apply_weight_rule,
}
