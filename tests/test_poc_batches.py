"""A PoC batch too big for one transaction is split into messages whose signed txs the chain accepts."""

from __future__ import annotations

import itertools
import random

import pytest

from dapi.chain.tx import sign_tx
from dapi.devnet.genesis import load_genesis
from dapi.devnet.ledger import Ledger
from dapi.devnet.ledger.ledger import MAX_TX_BYTES
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch
from dapi.poc.batches import DEFAULT_MAX_TX_BYTES, BatchTooLarge, split_batch


def ids() -> itertools.count[int]:
    return itertools.count(1)


def batch(n: int, seed: int = 7, creator: str = "gonka1helduaxd0n4q3mp6w8f5vt8x2u6t9whf74jpwe") -> MsgSubmitPocBatch:
    rng = random.Random(seed)
    # Nonces as a node spreads them (node_id + k * node_count) and distances below r_target: 5-byte
    # varints and 8-byte doubles, about 1.3 MB for 100,000 nonces.
    nonces = [3 + k * 1000 for k in range(n)]
    return MsgSubmitPocBatch(creator=creator, poc_stage_start_block_height=40,
                             batch_id="original", nonces=nonces, dist=[rng.uniform(0, 1.4) for _ in nonces],
                             node_id="node1")


def test_a_batch_that_fits_is_kept_as_it_is() -> None:
    msg = batch(1000)
    counter = ids()
    assert split_batch(msg, new_batch_id=lambda: f"b{next(counter)}") == [msg]
    assert msg.batch_id == "original"


def test_the_default_limit_is_cometbfts_and_the_devnets() -> None:
    assert DEFAULT_MAX_TX_BYTES == MAX_TX_BYTES == 1_048_576


def test_a_100k_nonce_batch_becomes_messages_whose_signed_txs_the_chain_accepts() -> None:
    genesis = load_genesis(None)
    ledger = Ledger(genesis)
    own = genesis.own
    account = ledger.account(own.signer_address)
    assert account is not None
    msg = batch(100_000, creator=own.address)
    assert msg.ByteSize() > MAX_TX_BYTES  # the whole batch could never land

    def signed(m: MsgSubmitPocBatch) -> bytes:
        # As the daemon signs: unordered, authz MsgExec from the signer for the account (the bigger envelope).
        return sign_tx(own.signer_key, [m], chain_id=ledger.chain_id, account_number=account.account_number,
                       unordered=True, timeout_timestamp_ns=ledger.now_ns() + 30 * 10**9,
                       account_address=own.address).raw

    whole = ledger.check_tx(signed(msg))
    assert whole.code == 21  # tx too large: what the daemon used to answer 200 for
    counter = ids()
    parts = split_batch(msg, new_batch_id=lambda: f"part-{next(counter)}")
    assert len(parts) == 2
    for part in parts:
        raw = signed(part)
        assert len(raw) <= MAX_TX_BYTES
        result = ledger.check_tx(raw)
        assert result.ok, result
    assert [n for p in parts for n in p.nonces] == list(msg.nonces)
    assert [d for p in parts for d in p.dist] == list(msg.dist)
    assert len({p.batch_id for p in parts}) == len(parts) and "original" not in {p.batch_id for p in parts}
    assert {(p.creator, p.poc_stage_start_block_height, p.node_id) for p in parts} == {(own.address, 40, "node1")}


def test_a_batch_four_times_the_limit_splits_into_few_parts() -> None:
    msg = batch(40_000)
    counter = ids()
    parts = split_batch(msg, max_tx_bytes=150_000, new_batch_id=lambda: f"p{next(counter)}")
    assert msg.ByteSize() > 3 * 150_000
    assert 4 <= len(parts) <= 8
    assert all(p.ByteSize() <= 150_000 - 2048 for p in parts)
    assert [n for p in parts for n in p.nonces] == list(msg.nonces)
    # Only the messages sent get an id: slices too big to send are halved before any id is drawn.
    assert [p.batch_id for p in parts] == [f"p{i}" for i in range(1, len(parts) + 1)]


def test_nothing_fits_a_limit_below_the_envelope() -> None:
    with pytest.raises(BatchTooLarge):
        split_batch(batch(10), max_tx_bytes=1000, new_batch_id=lambda: "x")
