"""Demand-aware pre-PoC selection of the POC_SLOT nodes (plan 6.6; DESIGN.md §6.1, policy `demand`).

A few blocks before the PoC the chain knows what each model was asked for during the Inference phase
that is ending. Instead of keeping about half of every participant's weight serving (the weight rule
of formation), it keeps just enough capacity serving to cover that demand with some headroom, and lets
everything else mine. First every model gets its minimum, then each gets its demand, models in id order:
- at least `min_serving_nodes_per_model` nodes while any is eligible, then demand D = real x headroom;
- a node is eligible while its participant's serving weight, this node included, stays strictly below
  `max_serving_fraction` of that participant's weight (as the 50% rule: nobody dodges the PoC with most
  of its weight) and it has weight (a node without weight must mine to earn some);
- participants are drawn weight-proportionally (seed sha256(f"{epoch}:{model}:pre-poc")), and the drawn
  one gives its largest eligible node, until the minimum is met (first pass) and the chosen throughput
  reaches D (second pass), or nobody is eligible.
The serving weight a participant accumulates counts against its cap in every later choice. Minimums come
before demand so that a model early in id order cannot use up the caps a later model needs to be served
at all (DESIGN.md §6.1: "at least one node while any exists").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

from dapi.devnet.schedule.assignment import draw_below
from dapi.devnet.schedule.records import ActiveParticipant, MLNodeInfo, ModelMLNodes

__all__ = ["PrePocSelectionParams", "pre_poc_seed", "select_poc_slots"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PrePocSelectionParams:
    """The genesis parameters of the pre-PoC selection (defaults: DESIGN.md §6.1)."""

    headroom: float = 1.25
    min_serving_nodes_per_model: int = 1
    max_serving_fraction: float = 0.5


def pre_poc_seed(epoch_index: int, model_id: str) -> bytes:
    return hashlib.sha256(f"{epoch_index}:{model_id}:pre-poc".encode()).digest()


def _exact(value: float) -> Fraction:
    # Through the shortest decimal repr, so 0.3 is 3/10 and not the binary double nearest to it.
    return Fraction(repr(value))


class _Candidates:
    """One participant's nodes of one model, largest first (list order breaks ties)."""

    def __init__(self, participant: ActiveParticipant, nodes: Sequence[MLNodeInfo], cap: Fraction) -> None:
        self.address = participant.index
        self.weight = participant.weight
        self.limit = cap * participant.weight
        order = sorted(range(len(nodes)), key=lambda i: (-nodes[i].poc_weight, i))
        self.nodes = [nodes[i] for i in order if nodes[i].poc_weight > 0]
        self.taken: set[str] = set()

    def _fitting(self, serving: int) -> list[MLNodeInfo]:
        return [n for n in self.nodes if n.node_id not in self.taken and serving + n.poc_weight < self.limit]

    def best(self, serving: int) -> MLNodeInfo | None:
        """The largest node not chosen yet that fits under the cap."""
        fitting = self._fitting(serving)
        return fitting[0] if fitting else None


def select_poc_slots(
    active: Sequence[ActiveParticipant],
    real: Mapping[str, int],
    *,
    epoch_index: int,
    params: PrePocSelectionParams = PrePocSelectionParams(),
) -> tuple[ActiveParticipant, ...]:
    """The members with their POC_SLOT flags chosen from demand (`real`: tokens per block per model).

    Every model any member serves is visited (a model missing from `real` has no demand, and still gets
    its minimum). Chosen nodes get POC_SLOT=true, every other node (overflow included) false; weights,
    throughputs and the layout are unchanged.
    """
    cap = _exact(params.max_serving_fraction)
    headroom = _exact(params.headroom)
    members = sorted(active, key=lambda p: p.index)
    serving = {p.index: 0 for p in members}
    chosen: set[tuple[str, str]] = set()
    models = [_ModelDraw(model_id, [_Candidates(p, p.nodes_for_model(model_id), cap) for p in members
                                    if model_id in p.models], pre_poc_seed(epoch_index, model_id))
              for model_id in sorted({m for p in members for m in p.models})]
    # Every model's minimum first, then demand: a model early in id order with much demand must not use
    # up the caps a later model needs to keep serving at all.
    for model in models:
        while model.count < params.min_serving_nodes_per_model and model.pick(serving, chosen):
            pass
    for model in models:
        demand = real.get(model.model_id, 0) * headroom
        while model.throughput < demand and model.pick(serving, chosen):
            pass
    return tuple(_with_flags(p, chosen) for p in active)


@dataclass
class _ModelDraw:
    """One model's seeded draw over its candidates, and what it has chosen so far."""

    model_id: str
    candidates: list[_Candidates]
    seed: bytes
    counter: int = 0
    throughput: int = 0
    count: int = 0

    def pick(self, serving: dict[str, int], chosen: set[tuple[str, str]]) -> bool:
        """Choose one more node (False when nobody is eligible)."""
        eligible: list[tuple[_Candidates, MLNodeInfo]] = []
        for c in self.candidates:
            best = c.best(serving[c.address])
            if best is not None:
                eligible.append((c, best))
        if not eligible:
            return False
        draw, self.counter = draw_below(self.seed, self.counter, sum(c.weight for c, _ in eligible))
        position = 0
        while draw >= eligible[position][0].weight:
            draw -= eligible[position][0].weight
            position += 1
        drawn, node = eligible[position]
        serving[drawn.address] += node.poc_weight
        chosen.add((drawn.address, node.node_id))
        drawn.taken.add(node.node_id)
        self.throughput += node.throughput
        self.count += 1
        return True


def _with_flags(participant: ActiveParticipant, chosen: set[tuple[str, str]]) -> ActiveParticipant:
    groups = tuple(
        ModelMLNodes(ml_nodes=tuple(
            n.with_poc_slot(position < len(participant.models) and (participant.index, n.node_id) in chosen)
            for n in group.ml_nodes
        ))
        for position, group in enumerate(participant.ml_nodes)
    )
    return replace(participant, ml_nodes=groups)
