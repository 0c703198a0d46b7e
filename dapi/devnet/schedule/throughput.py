"""Throughput vectors and their measurement (plan 6.4, 6.5; DESIGN.md §6.1).

Units are tokens per block. A node's serving capacity is its chain figure `MLNodeInfo.throughput`, so
the two vectors on an epoch's parent group compare like with like, index by index with
`sub_group_models`:
- `expected_throughput_vector[i]`: what model i can still serve during the PoC, the Σ throughput of its
  POC_SLOT nodes (set at formation, and again when a pre-PoC selection rewrites the flags);
- `real_throughput_vector[i]`: what model i was asked for, measured at the pre-PoC block over the
  Inference phase that is ending.
A model whose demand exceeds what stays serving during the PoC is reported as a shortfall.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from dapi.devnet.schedule.records import ActiveParticipant, EpochGroupData

__all__ = [
    "CompletedInference",
    "ThroughputShortfall",
    "expected_throughput_vector",
    "measure_model_throughput_for_blocks",
    "real_throughput_vector",
    "set_expected_throughput",
    "set_real_throughput",
    "validate_throughput_performance",
]


@dataclass(frozen=True, slots=True)
class CompletedInference:
    """One inference the chain counts as completed: its model, the block it completed in, its tokens."""

    model: str
    height: int
    tokens: int  # prompt + completion


@dataclass(frozen=True, slots=True)
class ThroughputShortfall:
    """A model whose measured demand exceeds the capacity that keeps serving during the PoC."""

    model_id: str
    demand: int  # real_throughput_vector[i], tokens per block
    capacity: int  # expected_throughput_vector[i], tokens per block

    def as_json(self) -> dict[str, object]:
        return {"model_id": self.model_id, "demand": self.demand, "capacity": self.capacity}


def measure_model_throughput_for_blocks(
    completed: Iterable[CompletedInference], model_id: str, from_height: int, to_height: int
) -> int:
    """MeasureModelThroughputForBlocks: Σ tokens of `model_id`'s inferences completed in heights
    (from_height, to_height], divided by the number of blocks, rounded up.

    Rounded up because this figure is a demand the chain must provide for: a trickle below one token per
    block is still demand, and rounding it to 0 would let a selection leave the model with nothing.
    """
    blocks = to_height - from_height
    if blocks <= 0:
        raise ValueError(f"an empty window: ({from_height}, {to_height}]")
    tokens = sum(c.tokens for c in completed if c.model == model_id and from_height < c.height <= to_height)
    return -(-tokens // blocks)


def expected_throughput_vector(models: Sequence[str], active: Iterable[ActiveParticipant]) -> tuple[int, ...]:
    """Per model (in `models` order): Σ throughput of its POC_SLOT nodes over all members."""
    members = tuple(active)
    return tuple(
        sum(n.throughput for p in members for n in p.nodes_for_model(model_id) if n.is_active_during_poc)
        for model_id in models
    )


def real_throughput_vector(
    models: Sequence[str], completed: Iterable[CompletedInference], from_height: int, to_height: int
) -> tuple[int, ...]:
    """Per model (in `models` order): its measured demand over (from_height, to_height]."""
    done = tuple(completed)
    return tuple(measure_model_throughput_for_blocks(done, m, from_height, to_height) for m in models)


def set_expected_throughput(parent: EpochGroupData, active: Iterable[ActiveParticipant]) -> EpochGroupData:
    """SetExpectedThroughput: the parent group with its expected vector from the members' POC_SLOT flags."""
    return replace(parent, expected_throughput_vector=expected_throughput_vector(parent.sub_group_models, active))


def set_real_throughput(
    parent: EpochGroupData, completed: Iterable[CompletedInference], from_height: int, to_height: int
) -> EpochGroupData:
    """SetRealThroughput: the parent group with the demand measured over (from_height, to_height]."""
    real = real_throughput_vector(parent.sub_group_models, completed, from_height, to_height)
    return replace(parent, real_throughput_vector=real)


def validate_throughput_performance(parent: EpochGroupData) -> tuple[ThroughputShortfall, ...]:
    """ValidateThroughputPerformance: every model whose demand exceeds its expected PoC-time capacity.

    A vector shorter than `sub_group_models` (not measured yet) counts as 0 where it has no entry.
    """
    expected, real = parent.expected_throughput_vector, parent.real_throughput_vector
    out = []
    for i, model_id in enumerate(parent.sub_group_models):
        demand = real[i] if i < len(real) else 0
        capacity = expected[i] if i < len(expected) else 0
        if demand > capacity:
            out.append(ThroughputShortfall(model_id, demand, capacity))
    return tuple(out)
