"""The devnet's ledger (the chain's state machine) without sockets: CheckTx codes, message rules at block time,
stored PoC data, history by height, and the EndBlock lifecycle driven by the simulated peers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dapi.chain.keys import SigningKey
from dapi.chain.tx import TxSigner, sign_tx
from dapi.devnet.genesis import DevnetGenesis, ParticipantSpec, load_genesis
from dapi.devnet.ledger import CODESPACE_INFERENCE, CODESPACE_SDK, InferenceCode, Ledger, SdkCode, TxRecord
from dapi.devnet.peers import Misbehaviour, PeerSimulator
from dapi.devnet.schedule.records import Model
from dapi.devnet.wire.queries import QueryError, QueryRouter, abci_error
from dapi.gen.inference.inference import hardware_node_pb2
from dapi.gen.inference.inference import query_pb2 as q
from dapi.gen.inference.inference import tx_pb2 as itx

# Default devnet params: epoch 1's PoC starts at 40; exchange window [41, 48]; validation window
# [48, 51]; formation at 51, switch at 53.
P1 = 40


@pytest.fixture
def ledger(genesis: DevnetGenesis) -> Ledger:
    return Ledger(genesis)


def signer_for(ledger: Ledger, who: ParticipantSpec, **kwargs: object) -> TxSigner:
    account = ledger.account(who.signer_address)
    assert account is not None
    kwargs.setdefault("clock_ns", ledger.now_ns)
    return TxSigner(who.signer_key, chain_id=ledger.chain_id, account_number=account.account_number,
                    account_address=who.address, **kwargs)  # type: ignore[arg-type]


def signed_with_timeout(ledger: Ledger, who: ParticipantSpec, message: object, timeout_ns: int) -> bytes:
    # sign_tx, not TxSigner: a TxSigner never goes back in time for a signer that already signed.
    account = ledger.account(who.signer_address)
    assert account is not None
    return sign_tx(who.signer_key, [message], chain_id=ledger.chain_id,  # type: ignore[list-item]
                   account_number=account.account_number, unordered=True, timeout_timestamp_ns=timeout_ns,
                   account_address=who.address).raw


def advance_to(ledger: Ledger, height: int, on_block: Callable[..., None] | None = None) -> None:
    while ledger.height < height:
        block = ledger.make_block()
        if on_block is not None:
            on_block(block)


def batch(who: ParticipantSpec, start: int = P1, batch_id: str = "b-1", node_id: str = "node1",
          nonces: tuple[int, ...] = (1, 6, 11)) -> itx.MsgSubmitPocBatch:
    return itx.MsgSubmitPocBatch(creator=who.address, poc_stage_start_block_height=start, batch_id=batch_id,
                                 nonces=list(nonces), dist=[0.5] * len(nonces), node_id=node_id)


def include(ledger: Ledger, raw: bytes) -> TxRecord:
    """CheckTx must accept it; the next block decides its result."""
    check = ledger.check_tx(raw)
    assert check.ok, check
    ledger.make_block()
    record = ledger.tx(check.hash)
    assert record is not None
    return record


# --- CheckTx ---------------------------------------------------------------------------------------


def test_a_granted_signer_batch_in_the_window_is_stored_with_its_node_id(ledger: Ledger,
                                                                         genesis: DevnetGenesis) -> None:
    advance_to(ledger, P1)
    record = include(ledger, signer_for(ledger, genesis.own).sign([batch(genesis.own)]).raw)
    assert (record.code, record.height) == (0, P1 + 1)
    [stored] = ledger.batches(P1)
    assert stored.node_id == "node1"
    assert stored.participant_address == genesis.own.address
    assert stored.received_at_block_height == P1 + 1
    assert stored.nonces == (1, 6, 11)


def test_undecodable_bytes_get_code_2_and_the_chain_goes_on(ledger: Ledger) -> None:
    result = ledger.check_tx(b"\x0a\x05hello\xff\xff")
    assert (result.code, result.codespace) == (SdkCode.TX_DECODE, CODESPACE_SDK)
    assert "parse error" in result.log
    assert ledger.mempool_size == 0
    ledger.make_block()
    assert ledger.height == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=0, max_size=300))
def test_arbitrary_bytes_are_rejected_without_an_exception(ledger: Ledger, raw: bytes) -> None:
    result = ledger.check_tx(raw)
    assert result.code != 0 and result.log


@pytest.mark.parametrize("what", ["chain_id", "account_number", "signature"])
def test_bad_signatures_are_unauthorized(ledger: Ledger, genesis: DevnetGenesis, what: str) -> None:
    own = genesis.own
    account = ledger.account(own.signer_address)
    assert account is not None
    chain_id = "other-chain" if what == "chain_id" else ledger.chain_id
    number = account.account_number + 1 if what == "account_number" else account.account_number
    signed = sign_tx(own.signer_key, [batch(own)], chain_id=chain_id, account_number=number, unordered=True,
                     timeout_timestamp_ns=ledger.now_ns() + 30 * 10**9, account_address=own.address)
    raw = signed.raw
    if what == "signature":
        raw = raw[:-1] + bytes([raw[-1] ^ 0x01])
    result = ledger.check_tx(raw)
    assert (result.code, result.codespace) == (SdkCode.UNAUTHORIZED, CODESPACE_SDK)
    assert "signature verification failed" in result.log
    assert ledger.mempool_size == 0


def test_an_ungranted_signer_is_unauthorized(ledger: Ledger, genesis: DevnetGenesis) -> None:
    # The own signer holds grants from the own account only, not from a peer's.
    peer = genesis.peers[0]
    own_signer = signer_for(ledger, genesis.own)
    own_signer.account_address = peer.address
    result = ledger.check_tx(own_signer.sign([batch(peer)]).raw)
    assert (result.code, result.codespace) == (SdkCode.UNAUTHORIZED, CODESPACE_SDK)
    assert "authorization not found" in result.log and peer.address in result.log


def test_a_message_whose_creator_is_not_the_signer_is_refused(ledger: Ledger, genesis: DevnetGenesis) -> None:
    own = genesis.own
    account = ledger.account(own.signer_address)
    assert account is not None
    # No MsgExec: the signer key sends a message whose creator is the account.
    signed = sign_tx(own.signer_key, [batch(own)], chain_id=ledger.chain_id, account_number=account.account_number,
                     unordered=True, timeout_timestamp_ns=ledger.now_ns() + 10**10)
    result = ledger.check_tx(signed.raw)
    assert result.code == SdkCode.INVALID_PUBKEY


def test_an_unknown_account_cannot_sign(ledger: Ledger) -> None:
    stranger = SigningKey(b"\x07" * 32)
    signed = sign_tx(stranger, [batch(dataclasses.replace(load_genesis(None).own, account_key=stranger))],
                     chain_id=ledger.chain_id, account_number=0, unordered=True,
                     timeout_timestamp_ns=ledger.now_ns() + 10**10)
    result = ledger.check_tx(signed.raw)
    assert result.code == SdkCode.UNKNOWN_ADDRESS and stranger.address in result.log


def test_replays_and_timeouts_of_unordered_txs(ledger: Ledger, genesis: DevnetGenesis) -> None:
    raw = signer_for(ledger, genesis.own).sign([batch(genesis.own)]).raw
    assert ledger.check_tx(raw).ok
    assert ledger.check_tx(raw).code == SdkCode.TX_IN_MEMPOOL_CACHE
    ledger.make_block()
    assert ledger.check_tx(raw).code == SdkCode.TX_IN_MEMPOOL_CACHE  # included: still a replay

    now = ledger.now_ns()
    expired = ledger.check_tx(signed_with_timeout(ledger, genesis.own, batch(genesis.own, batch_id="late"), now - 1))
    assert expired.code == SdkCode.TX_TIMEOUT

    far = signed_with_timeout(ledger, genesis.own, batch(genesis.own, batch_id="far"), now + 3600 * 10**9)
    too_far = ledger.check_tx(far)
    assert too_far.code == SdkCode.INVALID_REQUEST and "ttl" in too_far.log


def test_a_tx_that_expires_in_the_mempool_is_never_included(ledger: Ledger, genesis: DevnetGenesis) -> None:
    raw = signed_with_timeout(ledger, genesis.own, batch(genesis.own), ledger.now_ns() + 10**9)
    check = ledger.check_tx(raw)
    assert check.ok
    ledger.make_block(time_ns=ledger.now_ns() + 5 * 10**9)
    assert ledger.tx(check.hash) is None
    assert ledger.batches() == []


def test_ordered_txs_need_the_next_sequence(ledger: Ledger, genesis: DevnetGenesis) -> None:
    own = genesis.own
    account = ledger.account(own.address)
    assert account is not None

    def signed(sequence: int, batch_id: str) -> bytes:
        return sign_tx(own.account_key, [batch(own, batch_id=batch_id)], chain_id=ledger.chain_id,
                       account_number=account.account_number, sequence=sequence).raw

    assert ledger.check_tx(signed(0, "a")).ok
    assert ledger.check_tx(signed(0, "b")).code == SdkCode.WRONG_SEQUENCE
    assert ledger.check_tx(signed(1, "c")).ok
    ledger.make_block()
    assert account.sequence == 2


@pytest.mark.parametrize(("message", "code"), [
    (itx.MsgSubmitPocBatch(creator="not-an-address", poc_stage_start_block_height=40, batch_id="x", nonces=[1],
                           dist=[0.1]), SdkCode.INVALID_ADDRESS),
    (itx.MsgSubmitPocBatch(poc_stage_start_block_height=40, batch_id="x", nonces=[], dist=[]),
     SdkCode.INVALID_REQUEST),
    (itx.MsgSubmitPocBatch(poc_stage_start_block_height=40, batch_id=" ", nonces=[1], dist=[0.1]),
     SdkCode.INVALID_REQUEST),
    (itx.MsgSubmitPocBatch(poc_stage_start_block_height=40, batch_id="x", nonces=[1, 2], dist=[0.1]),
     SdkCode.INVALID_REQUEST),
    (itx.MsgSubmitPocBatch(poc_stage_start_block_height=40, batch_id="x", nonces=[1], dist=[float("nan")]),
     SdkCode.INVALID_REQUEST),
    (itx.MsgSubmitPocValidation(participant_address="x", poc_stage_start_block_height=40), SdkCode.INVALID_ADDRESS),
])
def test_basic_validity_is_checked_at_checktx(ledger: Ledger, genesis: DevnetGenesis, message: object,
                                              code: int) -> None:
    own = genesis.own
    if not message.creator:  # type: ignore[attr-defined]
        message.creator = own.address  # type: ignore[attr-defined]
    result = ledger.check_tx(signer_for(ledger, own).sign([message]).raw)  # type: ignore[list-item]
    assert (result.code, result.codespace) == (code, CODESPACE_SDK)


def test_injected_faults_hit_only_the_next_external_txs(ledger: Ledger, genesis: DevnetGenesis) -> None:
    ledger.inject_checktx_fault(2)
    signer = signer_for(ledger, genesis.own)
    first = ledger.check_tx(signer.sign([batch(genesis.own, batch_id="1")]).raw)
    internal = ledger.check_tx(signer.sign([batch(genesis.own, batch_id="2")]).raw, external=False)
    second = ledger.check_tx(signer.sign([batch(genesis.own, batch_id="3")]).raw)
    third = ledger.check_tx(signer.sign([batch(genesis.own, batch_id="4")]).raw)
    assert [first.code, internal.code, second.code, third.code] == [SdkCode.MEMPOOL_IS_FULL, 0,
                                                                    SdkCode.MEMPOOL_IS_FULL, 0]
    assert first.log == "mempool is full"
    assert ledger.mempool_size == 2


# --- message rules at block time ------------------------------------------------------------------


def test_poc_batch_exchange_window_and_start_height(ledger: Ledger, genesis: DevnetGenesis) -> None:
    own = genesis.own
    signer = signer_for(ledger, own)
    advance_to(ledger, 30)
    early = include(ledger, signer.sign([batch(own, batch_id="early")]).raw)
    assert (early.code, early.codespace) == (InferenceCode.UPCOMING_EPOCH_NOT_FOUND, CODESPACE_INFERENCE)

    advance_to(ledger, P1)
    wrong = include(ledger, signer.sign([batch(own, start=P1 - 1, batch_id="wrong")]).raw)
    assert wrong.code == InferenceCode.POC_WRONG_START_BLOCK_HEIGHT
    assert "doesn't match PoC stage start 40" in wrong.log

    advance_to(ledger, 47)
    last_in = include(ledger, signer.sign([batch(own, batch_id="last")]).raw)  # lands in 48 = deadline
    late = include(ledger, signer.sign([batch(own, batch_id="late")]).raw)  # lands in 49
    assert (last_in.height, last_in.code) == (48, 0)
    assert (late.height, late.code, late.codespace) == (49, InferenceCode.POC_TOO_LATE, CODESPACE_INFERENCE)
    assert "too late" in late.log and "[41, 48]" in late.log
    assert [b.batch_id for b in ledger.batches(P1)] == ["last"]


def test_validation_window(ledger: Ledger, genesis: DevnetGenesis) -> None:
    own, peer = genesis.own, genesis.peers[0]
    signer = signer_for(ledger, own)

    def vote(tag: str) -> bytes:
        return signer.sign([itx.MsgSubmitPocValidation(creator=own.address, participant_address=peer.address,
                                                       poc_stage_start_block_height=P1,
                                                       n_invalid=len(tag))]).raw

    advance_to(ledger, 46)
    assert include(ledger, vote("a")).code == InferenceCode.POC_TOO_LATE  # lands in 47, before the window
    assert include(ledger, vote("bb")).code == 0  # 48
    advance_to(ledger, 50)
    assert include(ledger, vote("ccc")).code == 0  # 51 = end of validation
    assert include(ledger, vote("dddd")).code == InferenceCode.POC_TOO_LATE  # 52
    [stored] = ledger.validations(P1)
    assert stored.n_invalid == 3  # one vote per validator and participant: the last one in the window


def test_a_repeated_batch_id_is_stored_once(ledger: Ledger, genesis: DevnetGenesis) -> None:
    own = genesis.own
    signer = signer_for(ledger, own)
    advance_to(ledger, P1)
    first = include(ledger, signer.sign([batch(own, nonces=(1, 2, 3))]).raw)
    again = include(ledger, signer.sign([batch(own, nonces=(4, 5))]).raw)
    assert first.code == again.code == 0
    [stored] = ledger.batches(P1)
    assert stored.nonces == (1, 2, 3)


def test_a_tx_is_all_or_nothing(ledger: Ledger, genesis: DevnetGenesis) -> None:
    own = genesis.own
    seed = itx.MsgSubmitSeed(creator=own.address, epoch_index=1, signature="ab")
    record = include(ledger, signer_for(ledger, own).sign([seed, batch(own)]).raw)  # no PoC yet: the batch fails
    assert record.code == InferenceCode.UPCOMING_EPOCH_NOT_FOUND
    assert "message index: 1" in record.log
    assert ledger.seeds() == []


def test_hardware_diff_is_validated_against_governance_when_the_block_is_made(
    ledger: Ledger, genesis: DevnetGenesis
) -> None:
    own = genesis.own
    signer = signer_for(ledger, own)

    def diff(*models: str, node: str = "node9") -> bytes:
        hw = hardware_node_pb2.HardwareNode(local_id=node, models=list(models), host="h", port="1")
        return signer.sign([itx.MsgSubmitHardwareDiff(creator=own.address, newOrModified=[hw])]).raw

    rejected = include(ledger, diff("Qwen/QwQ-32B", "acme/Unknown-1B"))
    assert (rejected.code, rejected.codespace) == (InferenceCode.INVALID_MODEL, CODESPACE_INFERENCE)
    assert "acme/Unknown-1B" in rejected.log
    assert ledger.hardware_nodes(own.address) is None

    ledger.set_governance_model(Model(id="acme/Unknown-1B", throughput_per_nonce=5))
    assert include(ledger, diff("acme/Unknown-1B")).code == 0
    assert include(ledger, diff("Qwen/QwQ-32B", node="node0")).code == 0
    record = ledger.hardware_nodes(own.address)
    assert record is not None
    assert [n.local_id for n in record.hardware_nodes] == ["node0", "node9"]


def test_latest_and_effective_epochs_have_history(ledger: Ledger) -> None:
    advance_to(ledger, 60)
    assert [ledger.latest_epoch(h).index for h in (1, 39, 40, 60)] == [0, 0, 1, 1]
    assert ledger.latest_epoch(40).poc_start_block_height == 40
    assert [ledger.effective_epoch(h).index for h in (52, 53)] == [0, 1]
    router = QueryRouter(ledger)
    old = q.QueryEpochInfoResponse.FromString(router.handle("/inference.inference.Query/EpochInfo", b"", 39))
    new = q.QueryEpochInfoResponse.FromString(router.handle("/inference.inference.Query/EpochInfo", b"", 0))
    assert (old.block_height, old.latest_epoch.index) == (39, 0)
    assert (new.block_height, new.latest_epoch.index) == (60, 1)
    with pytest.raises(QueryError) as future:
        router.handle("/inference.inference.Query/EpochInfo", b"", 61)
    assert abci_error("p", future.value).code == SdkCode.INVALID_REQUEST


def test_missing_epoch_group_is_not_found_on_both_transports(ledger: Ledger) -> None:
    router = QueryRouter(ledger)
    request = q.QueryGetEpochGroupDataRequest(epoch_index=7).SerializeToString()
    with pytest.raises(QueryError) as missing:
        router.handle("/inference.inference.Query/EpochGroupData", request)
    error = abci_error("/inference.inference.Query/EpochGroupData", missing.value)
    assert error.code != 0 and "not found" in error.log.lower()
    assert missing.value.status.name == "NOT_FOUND"


# --- the lifecycle with peers ----------------------------------------------------------------------


def run_with_peers(ledger: Ledger, genesis: DevnetGenesis, height: int) -> PeerSimulator:
    peers = PeerSimulator(ledger, genesis)
    advance_to(ledger, height, peers.on_block)
    return peers


def test_peers_form_epochs_and_their_txs_all_succeed(ledger: Ledger, genesis: DevnetGenesis) -> None:
    peers = run_with_peers(ledger, genesis, 95)
    assert peers.rejected() == [] and peers.failed() == []
    for index in (1, 2):
        report = ledger.report(index)
        assert report is not None
        assert sorted(m.name for m in report.members) == ["peer1", "peer2"]
        assert set(report.sub_group_models) == {m.id for m in genesis.models}
    # Genesis: every node mines (no allocations yet); later, POC_SLOT nodes keep their weight without batches.
    epoch1_nodes = {b.node_id for b in ledger.batches(40, genesis.peers[0].address)}
    assert epoch1_nodes == {"node1", "node2", "node3", "node4"}
    serving = {n.node_id for n in ledger.active_participants(1)[0].all_nodes if n.is_active_during_poc}
    assert serving
    mined_in_epoch2 = {b.node_id for b in ledger.batches(80, ledger.active_participants(1)[0].index)}
    assert mined_in_epoch2.isdisjoint(serving)
    # Epoch 1 was settled at epoch 2's formation; the peers claimed with their seeds at claim-money (94).
    assert {c.epoch_index for c in ledger.claims()} == {1}
    rewards = ledger.rewards(1)
    assert rewards is not None
    assert {c.participant: c.amount for c in ledger.claims()} == {a: s.amount for a, s in rewards.items()}


def test_a_peer_that_skips_its_seed_is_not_formed(ledger: Ledger, genesis: DevnetGenesis) -> None:
    peers = PeerSimulator(ledger, genesis)
    peers.set_misbehaviour("peer1", Misbehaviour(skip_seed=True))
    advance_to(ledger, 53, peers.on_block)
    report = ledger.report(1)
    assert report is not None
    assert [m.name for m in report.members] == ["peer2"]
    assert ledger.batches(40, genesis.participant("peer1").address)  # it did mine


def test_the_price_is_written_into_the_parent_group_at_set_new_validators(ledger: Ledger, genesis: DevnetGenesis) -> None:
    # As the real chain (module.go, moveUpcomingToEffectiveGroup): epoch 1 is formed at the end of its PoC
    # validation (height 51 for PoC start 40 with the devnet's params) with no price and no effective height;
    # at set-new-validators (53) the parent group gets both. Epoch 1's price: no proposals, so the default.
    assert genesis.epoch_params.default_unit_of_compute_price == 100
    run_with_peers(ledger, genesis, 51)
    formed = ledger.epoch_group(1)
    assert formed is not None and formed.sub_group_models
    assert (formed.unit_of_compute_price, formed.effective_block_height) == (0, 0)
    assert all(ledger.epoch_group(1, m).unit_of_compute_price == 0 for m in formed.sub_group_models)  # type: ignore[union-attr]
    run_with_peers(ledger, genesis, 53)
    effective = ledger.epoch_group(1)
    assert effective is not None
    assert (effective.unit_of_compute_price, effective.effective_block_height) == (100, 53)
    # The history keeps what a query at the formation height saw.
    at_formation = ledger.epoch_group(1, height=52)
    assert at_formation is not None and at_formation.unit_of_compute_price == 0
    report = ledger.report(1)
    assert report is not None and report.unit_of_compute_price == 100
