"""GetRandomExecutor's draw (reference/inference.md §3.1): who may serve a model now, and one weighted pick.

At the query height h, with the epoch effective then:

* from the next PoC start up to and including the next epoch's set-new-validators height (the context
  `EpochContext.from_effective_epoch` picks is not past its own set-new-validators, or the phase is not
  Inference) only participants with a POC_SLOT node for the model in the effective epoch's active
  participants qualify (their other nodes are mining);
* otherwise every member of the model's sub-group does.

Members are the effective epoch's model sub-group, each with its full participant weight; the pick is
weight-proportional (`draw`: r uniform in [0, total), the first member whose cumulative weight exceeds
r). The randomness comes from the caller (the query router seeds its own generator). As on the chain,
an INVALID participant is still drawn: the chain removes it only from the parent group.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dapi.chain.epochs import EpochContext, Phase, UnexpectedHeightError
from dapi.devnet.ledger.state import InferenceState

__all__ = ["Candidate", "ExecutorUnavailable", "draw", "executor_candidates", "poc_filter_applies"]


class ExecutorUnavailable(Exception):
    """No executor can be drawn; `not_found` separates the chain's NotFound from its Internal errors."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.not_found = not_found


@dataclass(frozen=True, slots=True)
class Candidate:
    """A sub-group member that may be drawn, with its weight."""

    address: str
    weight: int


def poc_filter_applies(state: InferenceState, height: int) -> bool:
    """True from the next PoC start through the next set-new-validators height (inclusive)."""
    effective = state.effective_epoch(height)
    try:
        ctx = EpochContext.from_effective_epoch(effective, state.params, height)
    except UnexpectedHeightError as exc:  # the chain panics: the effective epoch was not advanced
        raise ExecutorUnavailable(str(exc)) from None
    return not (ctx.phase_at(height) is Phase.INFERENCE and height > ctx.set_new_validators)


def executor_candidates(state: InferenceState, model: str, height: int) -> list[Candidate]:
    """The members of `model`'s sub-group that may serve at `height`, in member order."""
    effective = state.effective_epoch(height)
    parent = state.groups.get((effective.index, ""), height)
    if parent is None:
        raise ExecutorUnavailable(f"current epoch group {effective.index} not found")
    sub = state.groups.get((effective.index, model), height) if model in parent.sub_group_models else None
    if sub is None:
        raise ExecutorUnavailable(f"Error getting sub-group for model {model}")
    members = [Candidate(vw.member_address, vw.weight) for vw in sub.validation_weights]
    if not members:
        raise ExecutorUnavailable("Active participants found, but length is 0")
    if poc_filter_applies(state, height):
        active = state.active.get(effective.index)
        if active is None:
            raise ExecutorUnavailable(f"active participants of epoch {effective.index} not found", not_found=True)
        serving = {p.index for p in active if any(n.is_active_during_poc for n in p.nodes_for_model(model))}
        members = [m for m in members if m.address in serving]
        if not members:
            raise ExecutorUnavailable("After filtering participants the length is 0")
    return members


def draw(candidates: list[Candidate], rng: random.Random) -> str:
    """One weight-proportional pick (weights below 1 are never picked)."""
    total = sum(max(c.weight, 0) for c in candidates)
    if total <= 0:
        raise ExecutorUnavailable("the members' total weight is 0")
    r = rng.randrange(total)
    cumulative = 0
    for c in candidates:
        cumulative += max(c.weight, 0)
        if r < cumulative:
            return c.address
    raise AssertionError("unreachable: r < total")  # pragma: no cover
