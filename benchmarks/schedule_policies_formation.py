"""POC_SLOT policies compared by formation alone: no servers, thousands of epochs, larger networks.

The formation rules are pure functions (`dapi.devnet.schedule`), so the choice each policy makes can be
replayed over many epochs of synthetic networks far larger than a devnet (10, 50 and 200 participants).
Per epoch and participant: every node mines a weight near its base weight (seeded noise), except the
nodes that served during the PoC, which keep last epoch's weight (plan 6.3); then `assign_models` and
the policy's formation rule. For `demand`, the pre-PoC selection then re-chooses the flags from a
seeded synthetic demand per model (the devnet measures it from real inferences; here there are none).

Reported per policy, averaged over the epochs:
- serving share: the weight that keeps serving during the PoC (and so mines nothing) over all weight;
- dark: the share of (epoch, model) pairs where no node of the model serves during the PoC network-wide,
  and the share of epochs with at least one dark model;
- demand covered: the share of (epoch, model) pairs whose PoC-time capacity covers the synthetic demand
  (the same demand for every policy, so `weight` and `half-nodes` are judged on it too).

`python -m benchmarks.schedule_policies_formation [--epochs N] [--json]`; docs/schedule-policies.md has a run.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field

from dapi.devnet.schedule.assignment import PocSlotPolicy, apply_poc_slot_policy, assign_models
from dapi.devnet.schedule.models import ModelRegistry
from dapi.devnet.schedule.records import ActiveParticipant, HardwareNode, Model
from dapi.devnet.schedule.selection import PrePocSelectionParams, select_poc_slots

__all__ = ["Network", "PolicyFigures", "main", "make_network", "run_policy"]

# Three models of different sizes (throughput per nonce) and popularity: "rare" is declared by few nodes.
MODELS = (Model(id="m/big", throughput_per_nonce=5), Model(id="m/mid", throughput_per_nonce=10),
          Model(id="m/rare", throughput_per_nonce=20))
POPULARITY = {"m/big": 0.45, "m/mid": 0.45, "m/rare": 0.10}
# Synthetic demand: this share of the model's whole capacity (all its nodes), times seeded noise per epoch.
DEMAND_SHARE = {"m/big": 0.15, "m/mid": 0.25, "m/rare": 0.10}
NODE_WEIGHTS = (20, 50, 100, 200, 500)  # base weight of a node, drawn per node (mixed hardware)
REGISTRY = ModelRegistry.of(MODELS)
SIZES = (10, 50, 200)
POLICIES = (PocSlotPolicy.NONE, PocSlotPolicy.HALF_NODES, PocSlotPolicy.WEIGHT, PocSlotPolicy.DEMAND)


@dataclass(frozen=True, slots=True)
class Network:
    """Participants' declared nodes and each node's base weight."""

    hardware: dict[str, tuple[HardwareNode, ...]]
    base: dict[tuple[str, str], int]


def make_network(participants: int, seed: int) -> Network:
    """1 to 8 nodes per participant; a participant serves one or two models (its own mix)."""
    rng = random.Random(f"network:{participants}:{seed}")
    hardware: dict[str, tuple[HardwareNode, ...]] = {}
    base: dict[tuple[str, str], int] = {}
    ids = list(POPULARITY)
    for i in range(participants):
        address = f"gonka1p{i:04d}"
        mix = rng.choices(ids, weights=list(POPULARITY.values()), k=rng.choice((1, 2)))
        nodes = []
        for k in range(rng.randint(1, 8)):
            node_id = f"node{k + 1}"
            nodes.append(HardwareNode(local_id=node_id, models=(rng.choice(mix),)))
            base[(address, node_id)] = rng.choice(NODE_WEIGHTS)
        hardware[address] = tuple(nodes)
    return Network(hardware, base)


@dataclass
class PolicyFigures:
    """Sums over the epochs of one policy's run."""

    epochs: int = 0
    weight: int = 0
    serving_weight: int = 0
    model_epochs: int = 0
    dark: int = 0
    epochs_with_dark: int = 0
    covered: int = 0
    seconds: float = 0.0
    per_model_dark: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, float]:
        return {
            "serving_share": self.serving_weight / self.weight if self.weight else 0.0,
            "dark_model_epochs": self.dark / self.model_epochs if self.model_epochs else 0.0,
            "epochs_with_a_dark_model": self.epochs_with_dark / self.epochs if self.epochs else 0.0,
            "demand_covered": self.covered / self.model_epochs if self.model_epochs else 0.0,
            "ms_per_epoch": 1000 * self.seconds / self.epochs if self.epochs else 0.0,
        }


def _demand(rng: random.Random, capacity: dict[str, int]) -> dict[str, int]:
    return {m: int(c * DEMAND_SHARE[m] * rng.lognormvariate(0.0, 0.4)) for m, c in capacity.items()}


def run_policy(network: Network, policy: PocSlotPolicy, epochs: int, seed: int) -> PolicyFigures:
    """Form `epochs` epochs under `policy`; the noise and the demand depend only on (seed, epoch)."""
    figures = PolicyFigures()
    previous: dict[str, ActiveParticipant] = {}
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        rng = random.Random(f"epoch:{seed}:{epoch}")
        active = []
        for address, hardware in network.hardware.items():
            kept = {n.node_id: n.poc_weight for n in previous[address].all_nodes
                    if n.is_active_during_poc} if address in previous else {}
            weights = {n.local_id: kept.get(n.local_id, max(1, round(network.base[(address, n.local_id)]
                                                                     * rng.uniform(0.9, 1.1))))
                       for n in hardware}
            assignment = apply_poc_slot_policy(assign_models(weights, hardware, REGISTRY), epoch_index=epoch,
                                               participant_address=address, policy=policy)
            active.append(ActiveParticipant(index=address, weight=sum(weights.values()), models=assignment.models,
                                            ml_nodes=assignment.ml_nodes))
        models = sorted({m for p in active for m in p.models})
        capacity = {m: sum(n.throughput for p in active for n in p.nodes_for_model(m)) for m in models}
        demand = _demand(rng, capacity)
        if policy is PocSlotPolicy.DEMAND:
            # The chain would measure the Inference phase; the synthetic demand stands in for it.
            active = list(select_poc_slots(active, demand, epoch_index=epoch, params=PrePocSelectionParams()))
        dark_here = 0
        for m in models:
            serving = sum(n.throughput for p in active for n in p.nodes_for_model(m) if n.is_active_during_poc)
            figures.model_epochs += 1
            figures.covered += serving >= demand[m]
            if serving == 0:
                dark_here += 1
                figures.per_model_dark[m] = figures.per_model_dark.get(m, 0) + 1
        figures.dark += dark_here
        figures.epochs_with_dark += dark_here > 0
        figures.epochs += 1
        figures.weight += sum(p.weight for p in active)
        figures.serving_weight += sum(n.poc_weight for p in active for n in p.all_nodes if n.is_active_during_poc)
        previous = {p.index: p for p in active}
    figures.seconds = time.perf_counter() - started
    return figures


def main(epochs: int = 2000, seed: int = 1) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for size in SIZES:
        network = make_network(size, seed)
        nodes = len(network.base)
        for policy in POLICIES:
            figures = run_policy(network, policy, epochs, seed)
            row = {"participants": size, "nodes": nodes, "policy": str(policy), "epochs": epochs,
                   **figures.as_json()}
            rows.append(row)
            print(f"{size:>4} participants {nodes:>4} nodes  {policy!s:<10}  serving share "
                  f"{row['serving_share']:.3f}  dark model-epochs {row['dark_model_epochs']:.4f}  "
                  f"epochs with a dark model {row['epochs_with_a_dark_model']:.4f}  demand covered "
                  f"{row['demand_covered']:.4f}  ({row['ms_per_epoch']:.1f} ms/epoch)", flush=True)
    return rows


if __name__ == "__main__":
    count = int(sys.argv[sys.argv.index("--epochs") + 1]) if "--epochs" in sys.argv else 2000
    result = main(count)
    if "--json" in sys.argv:
        print(json.dumps(result, indent=1))
