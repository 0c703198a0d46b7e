"""Model coverage and the settlement of an epoch's reward (plan 7.x; DESIGN.md §6)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dapi.devnet.schedule.records import Decimal, EpochGroupData, MLNodeInfo, ValidationWeight
from dapi.devnet.schedule.settlement import (
    fixed_epoch_reward,
    participant_model_coverage,
    settle_epoch_rewards,
)

QWQ, Q7 = "Qwen/QwQ-32B", "Qwen/Qwen2.5-7B-Instruct"


def parent(**weights: int) -> EpochGroupData:
    return EpochGroupData(
        poc_start_block_height=40,
        epoch_index=1,
        validation_weights=tuple(ValidationWeight(member_address=a, weight=w) for a, w in weights.items()),
    )


def sub_group(model_id: str, *members: str, empty: tuple[str, ...] = ()) -> EpochGroupData:
    nodes = (MLNodeInfo(node_id="n", poc_weight=1),)
    return EpochGroupData(
        poc_start_block_height=40,
        epoch_index=1,
        model_id=model_id,
        validation_weights=(
            *(ValidationWeight(member_address=m, weight=1, ml_nodes=nodes) for m in members),
            *(ValidationWeight(member_address=m, weight=0) for m in empty),
        ),
    )


def test_model_coverage_of_a_participant() -> None:
    subs = [sub_group(QWQ, "alice"), sub_group(Q7, "alice", "bob", empty=("carol",))]
    alice = participant_model_coverage(subs, "alice")
    assert (alice.covered_models, alice.epoch_models, alice.is_full) == ((QWQ, Q7), (QWQ, Q7), True)
    bob = participant_model_coverage(subs, "bob")
    assert (bob.covered_models, bob.is_full) == ((Q7,), False)
    # Listed without any ML node in the sub-group is not coverage.
    assert participant_model_coverage(subs, "carol").covered_models == ()
    assert not participant_model_coverage(subs, "nobody").is_full
    # A parent group passed along is not a model.
    assert participant_model_coverage([parent(alice=1), *subs], "alice").epoch_models == (QWQ, Q7)
    # An epoch without model sub-groups gives nobody full coverage.
    assert not participant_model_coverage([], "alice").is_full


def test_equal_weights_golden_of_the_reference() -> None:
    # chain-logic.md §13 / §17 bitcoin_rewards_test: reward 100, 3 equal weights → 34/33/33 (remainder to the first).
    shares = settle_epoch_rewards(parent(a=7, b=7, c=7), [], 100)
    assert [s.amount for s in shares] == [34, 33, 33]


def test_full_coverage_counts_times_1_10() -> None:
    subs = [sub_group(QWQ, "alice"), sub_group(Q7, "alice", "bob")]
    shares = settle_epoch_rewards(parent(alice=100, bob=100), subs, 2100)
    assert [(s.participant, s.full_coverage, s.amount) for s in shares] == [("alice", True, 1100), ("bob", False, 1000)]
    # Without the bonus the same weights split evenly.
    assert [s.amount for s in settle_epoch_rewards(parent(alice=100, bob=100), [], 2100)] == [1050, 1050]


def test_everyone_covering_every_model_is_the_same_as_nobody() -> None:
    subs = [sub_group(QWQ, "a", "b"), sub_group(Q7, "a", "b")]
    assert [s.amount for s in settle_epoch_rewards(parent(a=3, b=1), subs, 1000)] == [750, 250]


def test_remainder_goes_to_the_first_member_with_weight() -> None:
    shares = settle_epoch_rewards(parent(zero=0, x=1, y=1), [], 3)
    assert [s.amount for s in shares] == [0, 2, 1]
    assert [s.amount for s in settle_epoch_rewards(parent(neg=-5, x=1), [], 10)] == [0, 10]
    assert [s.amount for s in settle_epoch_rewards(parent(x=0), [], 10)] == [0]  # no weight: nothing paid
    assert settle_epoch_rewards(parent(), [], 10) == ()


@settings(max_examples=100, deadline=None)
@given(
    weights=st.lists(st.integers(0, 10**9), min_size=1, max_size=8),
    covered=st.lists(st.booleans(), max_size=8),
    reward=st.integers(0, 10**15),
)
def test_property_settlement_pays_exactly_the_epoch_reward(
    weights: list[int], covered: list[bool], reward: int
) -> None:
    members = {f"p{i}": w for i, w in enumerate(weights)}
    full = [m for i, m in enumerate(members) if i < len(covered) and covered[i]]
    shares = settle_epoch_rewards(parent(**members), [sub_group(QWQ, *full)], reward)
    assert sum(s.amount for s in shares) == (reward if sum(weights) > 0 else 0)
    first = next((s for s in shares if s.weight > 0), None)
    for a in shares:
        for b in shares:
            if not (a.full_coverage and not b.full_coverage):
                continue
            # Per unit of weight a covering member gets exactly 1.10 times a non-covering one, up to the
            # floor (one coin) and the remainder that only the first member receives.
            if b is not first:
                assert 10 * b.weight * (a.amount + 1) >= 11 * a.weight * b.amount
            if a is not first:
                assert 11 * a.weight * (b.amount + 1) >= 10 * b.weight * a.amount


def test_fixed_epoch_reward_goldens() -> None:
    # chain-logic.md §13 [G]: initial 285e12, decay -0.000475: n=1 → 284864657146472; n=99 → 271908110525520;
    # n=1460 → 142449732098060; n=10000 → 2465733132889. Mainnet initial 323e12: n=1 → 322846611432668;
    # n=99 → 308162525262256.
    decay = Decimal(-475, -6)
    assert fixed_epoch_reward(285 * 10**12, decay, 0) == 285 * 10**12
    assert fixed_epoch_reward(285 * 10**12, decay, 1) == 284864657146472
    assert fixed_epoch_reward(285 * 10**12, decay, 99) == 271908110525520
    assert fixed_epoch_reward(285 * 10**12, decay, 1460) == 142449732098060
    assert fixed_epoch_reward(285 * 10**12, decay, 10000) == 2465733132889
    assert fixed_epoch_reward(323 * 10**12, decay, 1) == 322846611432668
    assert fixed_epoch_reward(323 * 10**12, decay, 99) == 308162525262256
