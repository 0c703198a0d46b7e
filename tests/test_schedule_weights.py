"""Per-ML-node PoC weight, the legacy spread and the validation majority (plan 5.x; DESIGN.md §6)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dapi.devnet.schedule.records import HardwareNode, PoCBatch, PoCValidation
from dapi.devnet.schedule.weights import (
    distribute_legacy_weight,
    is_poc_validated,
    nonce_weights_by_node,
    participant_node_weights,
)


def batch(node_id: str, nonces: int, batch_id: str = "b") -> PoCBatch:
    return PoCBatch(
        participant_address="p",
        poc_stage_start_block_height=40,
        batch_id=batch_id,
        nonces=tuple(range(nonces)),
        dist=(0.5,) * nonces,
        node_id=node_id,
    )


def hw(*local_ids: str) -> tuple[HardwareNode, ...]:
    return tuple(HardwareNode(local_id=lid, models=("m",)) for lid in local_ids)


def vote(validator: str, fraud: bool = False) -> PoCValidation:
    return PoCValidation(
        participant_address="p",
        validator_participant_address=validator,
        poc_stage_start_block_height=40,
        fraud_detected=fraud,
    )


# --- node weight = nonce count of its batches ------------------------------------------------------------


def test_node_weight_is_the_nonce_count_of_its_batches() -> None:
    weights = nonce_weights_by_node([batch("n2", 5, "1"), batch("n1", 3, "2"), batch("n2", 7, "3"), batch("", 4, "4")])
    assert weights == {"": 4, "n1": 3, "n2": 12}
    assert list(weights) == ["", "n1", "n2"]  # node_id order, legacy first (as the chain)


def test_nonces_are_not_deduplicated() -> None:
    # chain-logic.md §4.4: total = Σ len(nonces); no de-duplication of nonces.
    assert nonce_weights_by_node([batch("n1", 3, "1"), batch("n1", 3, "2")]) == {"n1": 6}


# --- legacy batches spread over the participant's non-preserved hardware nodes -----------------------------


def test_legacy_weight_with_a_remainder_goes_one_extra_to_the_first_nodes_in_local_id_order() -> None:
    # Structure of chain-logic.md §6.3 B (legacy "" = 10 over n1, n2, n3: per 3, rem 1). The reference
    # gives n1 per+2 = 5 (total 11, its over-allocation bug §15.2); the fixed rule gives n1 per+1 = 4.
    assert distribute_legacy_weight({"": 10}, hw("n3", "n1", "n2")) == {"n1": 4, "n2": 3, "n3": 3}
    assert distribute_legacy_weight({"": 11}, hw("n1", "n2", "n3")) == {"n1": 4, "n2": 4, "n3": 3}


def test_legacy_share_adds_to_weight_a_node_mined_under_its_own_id() -> None:
    # Structure of chain-logic.md §6.3 C (nodes ["":7, n1:5], hw n1, n2 → per 3, rem 1): reference n1 = 10,
    # fixed rule n1 = 5 + 4 = 9, n2 = 3; the sum is the 12 nonces mined.
    assert distribute_legacy_weight({"": 7, "n1": 5}, hw("n1", "n2")) == {"n1": 9, "n2": 3}


def test_preserved_nodes_get_no_legacy_share() -> None:
    # Structure of chain-logic.md §6.3 E: preserved {n2: 40}, legacy 100, hw n1..n4 → nDist 3, per 33, rem 1;
    # the first non-preserved node (n1) gets the +1, n2 keeps its carried-over 40.
    out = distribute_legacy_weight({"n2": 40, "": 100}, hw("n1", "n2", "n3", "n4"), {"n2"})
    assert out == {"n2": 40, "n1": 34, "n3": 33, "n4": 33}


def test_fewer_nonces_than_nodes_gives_one_each_to_the_first_nodes_and_zero_to_the_rest() -> None:
    assert distribute_legacy_weight({"": 2}, hw("a", "b", "c", "d")) == {"a": 1, "b": 1, "c": 0, "d": 0}


def test_legacy_weight_with_nowhere_to_go_is_kept_not_lost() -> None:
    # The reference panics (division by zero) when every hardware node is preserved, chain-logic.md §15.2.
    assert distribute_legacy_weight({"": 9, "n1": 5}, hw("n1"), {"n1"}) == {"": 9, "n1": 5}
    assert distribute_legacy_weight({"": 9}, ()) == {"": 9}
    assert distribute_legacy_weight({"n1": 5}, hw("n1", "n2")) == {"n1": 5}  # nothing legacy: unchanged


@settings(max_examples=150, deadline=None)
@given(
    weights=st.dictionaries(st.sampled_from(["", "a", "b", "c", "x", "y"]), st.integers(0, 10_000), max_size=6),
    hardware=st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=5),
    preserved=st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=5),
)
def test_property_legacy_distribution_conserves_weight(
    weights: dict[str, int], hardware: set[str], preserved: set[str]
) -> None:
    out = distribute_legacy_weight(weights, hw(*sorted(hardware)), preserved)
    assert sum(out.values()) == sum(weights.values())
    recipients = sorted(hardware - preserved)
    if "" in weights and recipients:
        assert "" not in out
        shares = [out[r] - weights.get(r, 0) for r in recipients]
        assert max(shares) - min(shares) <= 1  # evenly
        assert shares == sorted(shares, reverse=True)  # the +1s go to the first nodes in local_id order
    for node_id in preserved & set(weights):
        assert out[node_id] == weights[node_id]


# --- a participant's node list: mined + preserved + legacy + zero-weight declared nodes --------------------


def test_participant_node_weights_orders_declared_nodes_first_and_includes_idle_ones() -> None:
    weights = participant_node_weights({"n3": 30, "ghost": 5}, hw("n3", "n1", "n2"), {"n2": 40})
    assert list(weights.items()) == [("n1", 0), ("n2", 40), ("n3", 30), ("ghost", 5)]


def test_a_preserved_nodes_own_batches_are_ignored() -> None:
    # plan 6.3 / DESIGN.md §6: a POC_SLOT node keeps last epoch's weight; what it mined anyway does not count.
    weights = participant_node_weights({"n1": 999, "n2": 70}, hw("n1", "n2"), {"n1": 40})
    assert weights == {"n1": 40, "n2": 70}


# --- validation majority -------------------------------------------------------------------------------


def test_majority_golden_of_the_worked_example() -> None:
    # chain-logic.md §4.6: validators A=100, B=50, C=30 (total 180, half 90).
    validators = {"A": 100, "B": 50, "C": 30}
    assert is_poc_validated([vote("A"), vote("B", fraud=True)], validators)  # 100 > 90
    assert not is_poc_validated([vote("B"), vote("C")], validators)  # 80 ≤ 90


def test_majority_goldens_of_the_chain_tests() -> None:
    # chain-logic.md §17 chainvalidation_test: (staking) 200 of 100+200 → 200 > 150 accepted;
    # (b) one valid vote of 10 with total 20 → not > 10, rejected; (c) valid 10 vs fraud 10 → rejected.
    assert is_poc_validated([vote("V2")], {"V1": 100, "V2": 200})
    assert not is_poc_validated([vote("V1")], {"V1": 10, "V2": 10})
    assert not is_poc_validated([vote("V1"), vote("V2", fraud=True)], {"V1": 10, "V2": 10})
    # (a) "First epoch": a lone genesis validator with 100 tokens votes valid → 100 > 50.
    assert is_poc_validated([vote("G")], {"G": 100})


def test_majority_is_strictly_above_half_with_odd_totals_too() -> None:
    assert is_poc_validated([vote("A")], {"A": 91, "B": 90})  # 91 of 181
    assert not is_poc_validated([vote("A")], {"A": 90, "B": 91})  # 90 of 181 is below half


def test_only_current_validators_count_and_their_last_vote_wins() -> None:
    validators = {"A": 60, "B": 40}
    assert not is_poc_validated([vote("stranger")], validators)  # no vote from a current validator
    assert not is_poc_validated([], validators)
    assert is_poc_validated([vote("A", fraud=True), vote("A")], validators)  # last vote: valid
    assert not is_poc_validated([vote("A"), vote("A", fraud=True)], validators)
    assert not is_poc_validated([vote("A")], {"A": -100, "B": 40})  # negative weight counts as 0
    assert not is_poc_validated([vote("A")], {})
