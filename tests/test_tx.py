"""Building, signing, decoding and verifying Cosmos SDK txs (dapi.chain.tx)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from dapi.chain import tx as txmod
from dapi.chain.keys import SigningKey
from dapi.chain.messages import pack_any
from dapi.chain.tx import (
    DEFAULT_GAS_LIMIT,
    TxDecodeError,
    TxSigner,
    decode_tx,
    sign_tx,
    unique_timeout_ns,
    verify_tx_signature,
)
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExec
from dapi.gen.cosmos.base.v1beta1.coin_pb2 import Coin
from dapi.gen.cosmos.tx.v1beta1.tx_pb2 import TxBody, TxRaw
from dapi.gen.inference.inference import hardware_node_pb2
from dapi.gen.inference.inference import tx_pb2 as inf

# Golden vector from DESIGN.md §3 (copied verbatim): test key, its address, and the 302-byte TxRaw of
# MsgSubmitPocBatch{creator=<address>, poc_stage_start_block_height=12345, batch_id="b-1", nonces=[1,2,3],
# dist=[0.1,0.2,0.3], node_id="node-1"}, memo "exp", fee {gas_limit: 200000}, sequence 7, account_number 42,
# chain_id "gonka-testnet", ordered.
GOLDEN_KEY = "a6703374c8c14829bccb1eb13ecdb1ae7703d9e8b3e0a7f44b94bdfcebb0be32"
GOLDEN_ADDRESS = "gonka1helduaxd0n4q3mp6w8f5vt8x2u6t9whf74jpwe"
GOLDEN_CHAIN_ID = "gonka-testnet"
GOLDEN_ACCOUNT_NUMBER = 42
GOLDEN_TX_HEX = "0a8f010a87010a262f696e666572656e63652e696e666572656e63652e4d73675375626d6974506f634261746368125d0a2c676f6e6b613168656c6475617864306e3471336d70367738663576743878327536743977686637346a70776510b9601a03622d3122030102032a189a9999999999b93f9a9999999999c93f333333333333d33f32066e6f64652d31120365787012580a500a460a1f2f636f736d6f732e63727970746f2e736563703235366b312e5075624b657912230a21035b3d1462dc1577673d973161b7168dc17323339909078367c3b6426cceabfeda12040a0208011807120410c09a0c1a400ad21df377c958c0f87a980e7ea0a1447ecaa4ef819160c3675f8ece3f96b43971b5a24e7e64a203f686da006951814581f797b9c3c012e7cca190f187af33b3"
GOLDEN_TX = bytes.fromhex(GOLDEN_TX_HEX)

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def golden_message() -> inf.MsgSubmitPocBatch:
    return inf.MsgSubmitPocBatch(
        creator=GOLDEN_ADDRESS,
        poc_stage_start_block_height=12345,
        batch_id="b-1",
        nonces=[1, 2, 3],
        dist=[0.1, 0.2, 0.3],
        node_id="node-1",
    )


def key_from_int(secret: int) -> SigningKey:
    return SigningKey.from_hex(secret.to_bytes(32, "big").hex())


def fixed_clock(ns: int) -> Callable[[], int]:
    """A clock stuck at one instant: every tx is signed "in the same nanosecond"."""
    return lambda: ns


# --- golden vector ----------------------------------------------------------------------------------


def test_golden_tx_is_reproduced_byte_for_byte() -> None:
    key = SigningKey.from_hex(GOLDEN_KEY)
    assert key.address == GOLDEN_ADDRESS
    signed = sign_tx(
        key,
        [golden_message()],
        chain_id=GOLDEN_CHAIN_ID,
        account_number=GOLDEN_ACCOUNT_NUMBER,
        sequence=7,
        memo="exp",
        gas_limit=200_000,
    )
    assert len(signed.raw) == 302
    assert signed.raw.hex() == GOLDEN_TX_HEX
    assert signed.timeout_timestamp_ns is None


def test_golden_tx_decodes_and_verifies() -> None:
    decoded = decode_tx(GOLDEN_TX)
    assert decoded.messages == (golden_message(),)
    assert [(m.type_url, m.grantee) for m in decoded.effective_messages] == [
        ("/inference.inference.MsgSubmitPocBatch", None)
    ]
    assert decoded.signer_address == GOLDEN_ADDRESS
    assert decoded.signer_public_key == SigningKey.from_hex(GOLDEN_KEY).public_key
    assert (decoded.sequence, decoded.unordered, decoded.timeout_timestamp_ns) == (7, False, None)
    assert (decoded.gas_limit, decoded.fee_amount) == (200_000, ())
    assert decoded.body.memo == "exp"
    assert decoded.hash == txmod.tx_hash(GOLDEN_TX) == decoded.hash.upper()
    assert verify_tx_signature(GOLDEN_TX, GOLDEN_CHAIN_ID, GOLDEN_ACCOUNT_NUMBER)


def test_golden_tx_fails_for_wrong_chain_id_or_account_number() -> None:
    assert not verify_tx_signature(GOLDEN_TX, "gonka-mainnet", GOLDEN_ACCOUNT_NUMBER)
    assert not verify_tx_signature(GOLDEN_TX, GOLDEN_CHAIN_ID, GOLDEN_ACCOUNT_NUMBER + 1)


def test_every_single_byte_tamper_of_the_golden_tx_fails_verification() -> None:
    for position in range(len(GOLDEN_TX)):
        tampered = bytearray(GOLDEN_TX)
        tampered[position] ^= 0x01
        assert not verify_tx_signature(bytes(tampered), GOLDEN_CHAIN_ID, GOLDEN_ACCOUNT_NUMBER), position


def test_expected_public_key_must_match_the_signer() -> None:
    other = key_from_int(12345)
    assert verify_tx_signature(
        GOLDEN_TX, GOLDEN_CHAIN_ID, GOLDEN_ACCOUNT_NUMBER, public_key=SigningKey.from_hex(GOLDEN_KEY).public_key
    )
    assert not verify_tx_signature(GOLDEN_TX, GOLDEN_CHAIN_ID, GOLDEN_ACCOUNT_NUMBER, public_key=other.public_key)


# --- random messages and keys -------------------------------------------------------------------------

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
uint64s = st.integers(min_value=0, max_value=2**64 - 1)
texts = st.text(max_size=40)
floats = st.floats(allow_nan=False)

poc_batches = st.builds(
    inf.MsgSubmitPocBatch,
    creator=texts,
    poc_stage_start_block_height=int64s,
    batch_id=texts,
    nonces=st.lists(int64s, max_size=20),
    dist=st.lists(floats, max_size=20),
    node_id=texts,
)
poc_validations = st.builds(
    inf.MsgSubmitPocValidation,
    creator=texts,
    participant_address=texts,
    poc_stage_start_block_height=int64s,
    r_target=floats,
    fraud_threshold=floats,
    n_invalid=int64s,
    probability_honest=floats,
    fraud_detected=st.booleans(),
)
seeds = st.builds(inf.MsgSubmitSeed, creator=texts, epoch_index=uint64s, signature=texts)
claims = st.builds(inf.MsgClaimRewards, creator=texts, seed=int64s, epoch_index=uint64s)
hardware_diffs = st.builds(
    inf.MsgSubmitHardwareDiff,
    creator=texts,
    newOrModified=st.lists(
        st.builds(
            hardware_node_pb2.HardwareNode,
            local_id=texts,
            status=st.sampled_from(list(hardware_node_pb2.HardwareNodeStatus.values())),
            models=st.lists(texts, max_size=3),
            host=texts,
            port=texts,
        ),
        max_size=3,
    ),
)
any_message = st.one_of(poc_batches, poc_validations, seeds, claims, hardware_diffs)
keys = st.integers(min_value=1, max_value=SECP256K1_ORDER - 1).map(key_from_int)
chain_ids = st.text(min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    key=keys,
    msgs=st.lists(any_message, min_size=1, max_size=3),
    chain_id=chain_ids,
    account_number=uint64s,
    sequence=uint64s,
    unordered=st.booleans(),
)
def test_random_txs_verify_and_decode_back(
    key: SigningKey,
    msgs: list[Message],
    chain_id: str,
    account_number: int,
    sequence: int,
    unordered: bool,
) -> None:
    signed = sign_tx(
        key,
        msgs,
        chain_id=chain_id,
        account_number=account_number,
        sequence=sequence,
        unordered=unordered,
        timeout_timestamp_ns=1_700_000_000_123_456_789 if unordered else None,
    )
    assert verify_tx_signature(signed.raw, chain_id, account_number, public_key=key.public_key)
    assert not verify_tx_signature(signed.raw, chain_id + "x", account_number)
    assert not verify_tx_signature(signed.raw, chain_id, (account_number + 1) % 2**64)
    decoded = decode_tx(signed.raw)
    assert list(decoded.messages) == msgs
    assert decoded.signer_address == key.address
    assert decoded.sequence == sequence
    assert decoded.unordered is unordered


@settings(max_examples=30, deadline=None)
@given(key=keys, msg=any_message, position=st.integers(min_value=0))
def test_random_tampering_fails_verification(key: SigningKey, msg: Message, position: int) -> None:
    signed = sign_tx(key, [msg], chain_id="c", account_number=1)
    tampered = bytearray(signed.raw)
    tampered[position % len(tampered)] ^= 0x80
    assert not verify_tx_signature(bytes(tampered), "c", 1)


# --- authz -----------------------------------------------------------------------------------------------


def test_messages_are_wrapped_in_msg_exec_when_the_signer_is_not_the_account() -> None:
    account, signer = key_from_int(1111), key_from_int(2222)
    inner = inf.MsgSubmitSeed(creator=account.address, epoch_index=5, signature="ab" * 32)
    signed = TxSigner(signer, chain_id="c", account_number=9, account_address=account.address).sign([inner])

    decoded = decode_tx(signed.raw)
    (outer,) = decoded.messages
    assert isinstance(outer, MsgExec)
    assert outer.grantee == signer.address
    (effective,) = decoded.effective_messages
    assert effective.type_url == "/inference.inference.MsgSubmitSeed"
    assert effective.message == inner
    assert effective.grantee == signer.address
    assert decoded.signer_address == signer.address
    assert verify_tx_signature(signed.raw, "c", 9, public_key=signer.public_key)
    assert not verify_tx_signature(signed.raw, "c", 9, public_key=account.public_key)


def test_several_messages_share_one_msg_exec() -> None:
    account, signer = key_from_int(3333), key_from_int(4444)
    msgs = [inf.MsgSubmitSeed(creator=account.address), inf.MsgClaimRewards(creator=account.address, seed=-1)]
    signed = sign_tx(signer, msgs, chain_id="c", account_number=1, account_address=account.address)
    decoded = decode_tx(signed.raw)
    assert len(decoded.messages) == 1
    assert [m.message for m in decoded.effective_messages] == msgs


def test_no_wrapping_when_the_signer_is_the_account() -> None:
    key = key_from_int(5555)
    msg = inf.MsgClaimRewards(creator=key.address, seed=7, epoch_index=3)
    signer = TxSigner(key, chain_id="c", account_number=1, account_address=key.address)
    assert not signer.uses_authz
    decoded = decode_tx(signer.sign([msg]).raw)
    assert decoded.messages == (msg,)
    assert decoded.effective_messages[0].grantee is None


# --- unordered production txs ---------------------------------------------------------------------


def test_production_txs_are_unordered_with_zero_fee_and_huge_gas() -> None:
    now = 1_750_000_000_000_000_000
    key = key_from_int(6666)
    signed = TxSigner(key, chain_id="c", account_number=1, clock_ns=fixed_clock(now)).sign(
        [inf.MsgSubmitSeed(creator=key.address)]
    )
    decoded = decode_tx(signed.raw)
    assert decoded.unordered is True
    assert decoded.sequence == 0
    assert decoded.gas_limit == DEFAULT_GAS_LIMIT == 1_000_000_000
    assert decoded.fee_amount == ()
    assert decoded.timeout_timestamp_ns == signed.timeout_timestamp_ns
    assert signed.timeout_timestamp_ns is not None and signed.timeout_timestamp_ns >= now + 60 * 10**9
    timestamp = decoded.body.timeout_timestamp
    assert timestamp.seconds * 10**9 + timestamp.nanos == signed.timeout_timestamp_ns
    assert verify_tx_signature(signed.raw, "c", 1)


def test_timeouts_strictly_increase_per_signer_even_within_one_nanosecond() -> None:
    now = 1_760_000_000_000_000_000
    key = key_from_int(7777)
    msg = inf.MsgSubmitSeed(creator=key.address, epoch_index=1)
    first = TxSigner(key, chain_id="c", account_number=1, clock_ns=fixed_clock(now))
    # A rebuilt signer for the same key (e.g. after re-reading the account number) shares the clock.
    second = TxSigner(key, chain_id="c", account_number=1, clock_ns=fixed_clock(now))
    txs = [first.sign([msg]), first.sign([msg]), second.sign([msg]), first.sign([msg])]
    timeouts = [t.timeout_timestamp_ns or 0 for t in txs]
    assert timeouts == sorted(timeouts) and len(set(timeouts)) == len(timeouts)
    assert timeouts[0] == now + 60 * 10**9
    assert len({t.hash for t in txs}) == len(txs)
    assert len({t.raw for t in txs}) == len(txs)


def test_timeouts_of_different_signers_are_independent() -> None:
    now = 1_770_000_000_000_000_000
    a, b = "gonka1independent-a", "gonka1independent-b"
    assert unique_timeout_ns(a, now, 5) == now + 5
    assert unique_timeout_ns(a, now, 5) == now + 6
    assert unique_timeout_ns(b, now, 5) == now + 5
    # A clock that moves forward is used as is, not bumped.
    assert unique_timeout_ns(a, now + 100, 5) == now + 105


def test_fee_and_gas_are_overridable() -> None:
    key = key_from_int(8888)
    signer = TxSigner(
        key,
        chain_id="c",
        account_number=1,
        gas_limit=250_000,
        fee_amount=[Coin(denom="ngonka", amount="1000")],
        timeout_seconds=5,
        clock_ns=fixed_clock(1_780_000_000_000_000_000),
    )
    decoded = decode_tx(signer.sign([inf.MsgSubmitSeed(creator=key.address)]).raw)
    assert decoded.gas_limit == 250_000
    assert decoded.fee_amount == (Coin(denom="ngonka", amount="1000"),)
    assert decoded.timeout_timestamp_ns == 1_780_000_000_000_000_000 + 5 * 10**9


# --- rejects ------------------------------------------------------------------------------------------


def test_sign_tx_rejects_empty_or_unbounded_txs() -> None:
    key = key_from_int(9999)
    with pytest.raises(ValueError, match="at least one message"):
        sign_tx(key, [], chain_id="c", account_number=1)
    with pytest.raises(ValueError, match="timeout"):
        sign_tx(key, [inf.MsgSubmitSeed()], chain_id="c", account_number=1, unordered=True)


def _raw_with_body(body: TxBody) -> bytes:
    golden = TxRaw.FromString(GOLDEN_TX)
    return TxRaw(
        body_bytes=body.SerializeToString(), auth_info_bytes=golden.auth_info_bytes, signatures=golden.signatures
    ).SerializeToString()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff\xff\xff", id="garbage"),
        pytest.param(_raw_with_body(TxBody()), id="no-messages"),
        pytest.param(
            _raw_with_body(TxBody(messages=[Any(type_url="/inference.inference.MsgNope", value=b"")])),
            id="unknown-type-url",
        ),
        pytest.param(
            _raw_with_body(TxBody(messages=[pack_any(MsgExec(grantee="g"))])),
            id="empty-msg-exec",
        ),
        pytest.param(
            TxRaw(body_bytes=TxRaw.FromString(GOLDEN_TX).body_bytes).SerializeToString(),
            id="unsigned",
        ),
    ],
)
def test_undecodable_txs_raise_and_do_not_verify(raw: bytes) -> None:
    with pytest.raises(TxDecodeError):
        decode_tx(raw)
    assert not verify_tx_signature(raw, GOLDEN_CHAIN_ID, GOLDEN_ACCOUNT_NUMBER)
