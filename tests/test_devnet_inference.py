"""The devnet chain's inference path without sockets (reference/inference.md §2-§4): the lifecycle table of
MsgStartInference / MsgFinishInference in either order, escrow, payments and refunds, expiry in EndBlock,
every check with its code, the executor draw, validation and the claim-time rule. Real signed txs throughout.

Default devnet params: epoch 1 is formed at 51 and effective from 53 (its members are the two peers, which
mine; the own participant does not), epoch 2's PoC starts at 80. Inferences complete only while the
effective epoch has a sub-group for their model, so the tests run from height 55.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inference_msgs import QWEN, QWQ, finish_msg, make_request, start_msg

from dapi.chain.keys import SigningKey
from dapi.chain.tx import TxSigner
from dapi.devnet.genesis import ClientSpec, DevnetGenesis, ParticipantSpec
from dapi.devnet.ledger import CODESPACE_INFERENCE, CODESPACE_SDK, InferenceCode, Ledger, SdkCode, TxRecord
from dapi.devnet.ledger.executors import Candidate, ExecutorUnavailable, draw, executor_candidates
from dapi.devnet.ledger.inferences import InferenceStatus
from dapi.devnet.ledger.state import INFERENCE_MODULE_ADDRESS
from dapi.devnet.peers import PeerSimulator
from dapi.devnet.schedule.records import ModelMLNodes
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExecResponse
from dapi.gen.cosmos.base.abci.v1beta1.abci_pb2 import TxMsgData
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.signatures import ClientScheme, dev_signed_bytes, sign, ta_signed_bytes

READY = 55  # epoch 1 effective, Inference phase
PRICE = 1000  # no dynamic price: the chain's default per-token cost


@pytest.fixture
def ledger(genesis: DevnetGenesis) -> Ledger:
    ledger = Ledger(genesis)
    peers = PeerSimulator(ledger, genesis)
    while ledger.height < READY:
        peers.on_block(ledger.make_block())
    return ledger


@pytest.fixture
def client(genesis: DevnetGenesis) -> ClientSpec:
    return genesis.clients[0]


@pytest.fixture
def ta(genesis: DevnetGenesis) -> ParticipantSpec:
    return genesis.own


@pytest.fixture
def executor(genesis: DevnetGenesis) -> ParticipantSpec:
    return genesis.peers[0]


def tx_signer(ledger: Ledger, who: ParticipantSpec) -> TxSigner:
    account = ledger.account(who.signer_address)
    assert account is not None
    return TxSigner(who.signer_key, chain_id=ledger.chain_id, account_number=account.account_number,
                    account_address=who.address, clock_ns=ledger.now_ns)


def send(ledger: Ledger, who: ParticipantSpec, message: object) -> TxRecord:
    """Sign as `who` (its signer key through authz), pass CheckTx, make the block; the tx's result."""
    check = ledger.check_tx(tx_signer(ledger, who).sign([message]).raw)  # type: ignore[list-item]
    assert check.ok, check
    ledger.make_block()
    record = ledger.tx(check.hash)
    assert record is not None
    return record


def events(record: TxRecord, kind: str) -> list[dict[str, str]]:
    return [dict(e.attributes) for e in record.events if e.type == kind]


def failed(record: TxRecord, code: int, codespace: str = CODESPACE_INFERENCE) -> bool:
    return (record.code, record.codespace) == (code, codespace)


# --- the lifecycle table (inference.md §2.4) ---------------------------------------------------------


def test_start_then_finish_escrows_then_pays_the_cost_and_refunds_the_rest(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor)
    before = ledger.state.balance(client.address)
    started = send(ledger, ta, start_msg(req, max_tokens=100, prompt_tokens=10))
    assert started.code == 0
    escrow = (100 + 10) * PRICE
    inference = ledger.state.inferences[req.inference_id]
    assert (inference.status, inference.escrow_amount, inference.per_token_price) == (
        InferenceStatus.STARTED, escrow, PRICE)
    assert (inference.requested_by, inference.assigned_to, inference.start_block_height) == (
        client.address, executor.address, started.height)
    assert ledger.state.balance(client.address) == before - escrow
    assert ledger.state.balance(INFERENCE_MODULE_ADDRESS) == escrow
    assert events(started, "inference_finished") == []
    # The response carries the inference index, inside the MsgExec response.
    [packed] = TxMsgData.FromString(started.data).msg_responses
    [inner] = MsgExecResponse.FromString(packed.value).results
    assert itx.MsgStartInferenceResponse.FromString(inner).inference_index == req.inference_id

    finished = send(ledger, executor, finish_msg(req, prompt_tokens=12, completion_tokens=50))
    assert finished.code == 0
    cost = (12 + 50) * PRICE
    inference = ledger.state.inferences[req.inference_id]
    assert (inference.status, inference.actual_cost, inference.escrow_amount) == (
        InferenceStatus.FINISHED, cost, escrow)
    assert (inference.epoch_id, inference.epoch_poc_start_block_height) == (1, 40)
    assert ledger.state.balance(client.address) == before - cost  # the rest came back
    assert ledger.state.balance(INFERENCE_MODULE_ADDRESS) == cost  # held until settlement
    work = ledger.state.work_of(executor.address)
    assert (work.coin_balance, work.current_epoch_stats.earned_coins, work.current_epoch_stats.inference_count) == (
        cost, cost, 1)
    assert ledger.state.work_of(ta.address).coin_balance == 0  # nothing for the transfer agent
    assert events(finished, "inference_finished") == [{"inference_id": req.inference_id}]
    parent = ledger.epoch_group(1, "")
    assert parent is not None and parent.number_of_requests == 1
    details = ledger.state.validation_details[(1, req.inference_id)]
    sub = ledger.epoch_group(1, QWQ)
    assert sub is not None
    assert (details.executor_id, details.model, details.total_power, details.traffic_basis) == (
        executor.address, QWQ, sub.total_weight, 1)
    assert details.executor_power == parent.weight_of(executor.address).weight  # type: ignore[union-attr]
    assert ledger.tokens_by_model(0, 2**62) == {QWQ: (62, 1)}
    assert ledger.inference_totals(1) == {QWQ: (1, 62)} and ledger.inference_totals(2) == {}


def test_a_cost_above_the_escrow_pays_the_escrow_and_keeps_the_uncapped_cost(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor)
    before = ledger.state.balance(client.address)
    assert send(ledger, ta, start_msg(req, max_tokens=10, prompt_tokens=5)).code == 0
    assert send(ledger, executor, finish_msg(req, prompt_tokens=5, completion_tokens=50)).code == 0
    escrow, cost = 15 * PRICE, 55 * PRICE
    inference = ledger.state.inferences[req.inference_id]
    assert (inference.actual_cost, inference.escrow_amount) == (cost, escrow)
    assert ledger.state.work_of(executor.address).coin_balance == escrow
    assert ledger.state.balance(client.address) == before - escrow


def test_finish_then_start_pays_the_smaller_of_cost_and_escrow(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor)
    before = ledger.state.balance(client.address)
    finished = send(ledger, executor, finish_msg(req, prompt_tokens=12, completion_tokens=50))
    assert finished.code == 0 and events(finished, "inference_finished") == []
    orphan = ledger.state.inferences[req.inference_id]
    assert (orphan.status, orphan.requested_by, orphan.executed_by) == (InferenceStatus.FINISHED, "", executor.address)
    assert ledger.state.balance(client.address) == before  # nobody paid yet
    assert ledger.state.work_of(executor.address).coin_balance == 0

    started = send(ledger, ta, start_msg(req, max_tokens=100, prompt_tokens=10))
    assert started.code == 0
    assert events(started, "inference_finished") == [{"inference_id": req.inference_id}]
    pay = min(62 * PRICE, 110 * PRICE)
    inference = ledger.state.inferences[req.inference_id]
    assert inference.status is InferenceStatus.FINISHED  # Start does not touch the status
    assert (inference.actual_cost, inference.requested_by, inference.prompt_token_count) == (
        pay, client.address, 12)
    assert ledger.state.balance(client.address) == before - pay
    assert ledger.state.work_of(executor.address).coin_balance == pay
    # The timeout is still set, but a FINISHED inference does not expire.
    for _ in range(25):
        ledger.make_block()
    assert ledger.state.inferences[req.inference_id].status is InferenceStatus.FINISHED
    assert ledger.state.balance(client.address) == before - pay


def test_finish_first_with_a_cost_above_the_escrow_moves_only_the_escrow(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor)
    before = ledger.state.balance(client.address)
    assert send(ledger, executor, finish_msg(req, prompt_tokens=5, completion_tokens=500)).code == 0
    assert send(ledger, ta, start_msg(req, max_tokens=10, prompt_tokens=5)).code == 0
    inference = ledger.state.inferences[req.inference_id]
    assert inference.actual_cost == 15 * PRICE  # the min rule: actual_cost is what was paid
    assert ledger.state.balance(client.address) == before - 15 * PRICE


def test_the_first_message_locks_the_price(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    ledger.set_model_price(QWQ, 7)
    req = make_request(client, ta, executor)
    assert send(ledger, ta, start_msg(req, max_tokens=100, prompt_tokens=10)).code == 0
    ledger.set_model_price(QWQ, 9)
    assert send(ledger, executor, finish_msg(req, prompt_tokens=10, completion_tokens=20)).code == 0
    inference = ledger.state.inferences[req.inference_id]
    assert (inference.per_token_price, inference.escrow_amount, inference.actual_cost) == (7, 110 * 7, 30 * 7)
    # Finish first: its price stands when Start comes.
    second = make_request(client, ta, executor)
    assert send(ledger, executor, finish_msg(second, prompt_tokens=10, completion_tokens=20)).code == 0
    ledger.set_model_price(QWQ, 11)
    assert send(ledger, ta, start_msg(second)).code == 0
    assert ledger.state.inferences[second.inference_id].per_token_price == 9


def test_a_zero_price_escrows_and_pays_nothing(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    ledger.set_model_price(QWQ, 0)  # the grace period's price
    req = make_request(client, ta, executor)
    before = ledger.state.balance(client.address)
    assert send(ledger, ta, start_msg(req)).code == 0
    assert send(ledger, executor, finish_msg(req)).code == 0
    assert ledger.state.balance(client.address) == before
    work = ledger.state.work_of(executor.address)
    assert (work.coin_balance, work.current_epoch_stats.inference_count) == (0, 0)  # only a paid one counts


def test_a_started_inference_expires_in_endblock_with_refund_and_a_missed_request(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor)
    before = ledger.state.balance(client.address)
    started = send(ledger, ta, start_msg(req))
    expires = started.height + ledger.genesis.validation_params.expiration_blocks
    while ledger.height < expires - 1:
        ledger.make_block()
    assert ledger.state.inferences[req.inference_id].status is InferenceStatus.STARTED
    ledger.make_block()  # EndBlock of the expiration height
    inference = ledger.state.inferences[req.inference_id]
    assert (inference.status, inference.actual_cost) == (InferenceStatus.EXPIRED, 0)
    assert ledger.state.balance(client.address) == before
    assert ledger.state.balance(INFERENCE_MODULE_ADDRESS) == 0
    assert ledger.state.work_of(executor.address).current_epoch_stats.missed_requests == 1
    late = send(ledger, executor, finish_msg(req))
    assert failed(late, InferenceCode.INFERENCE_EXPIRED) and "expired" in late.log
    assert ledger.state.work_of(executor.address).coin_balance == 0


def test_a_finish_in_the_expiration_block_itself_is_in_time(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor)
    started = send(ledger, ta, start_msg(req))
    while ledger.height < started.height + ledger.genesis.validation_params.expiration_blocks - 1:
        ledger.make_block()
    finished = send(ledger, executor, finish_msg(req))  # delivered before that block's EndBlock
    assert finished.code == 0
    assert ledger.state.inferences[req.inference_id].status is InferenceStatus.FINISHED


def test_an_inference_assigned_to_a_non_participant_never_expires(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, genesis: DevnetGenesis
) -> None:
    stranger = replace(genesis.peers[1], account_key=SigningKey(b"\x09" * 32))
    req = make_request(client, ta, stranger)
    before = ledger.state.balance(client.address)
    assert send(ledger, ta, start_msg(req)).code == 0
    for _ in range(25):
        ledger.make_block()
    # As the chain: no refund, no status change, and the timeout is gone.
    assert ledger.state.inferences[req.inference_id].status is InferenceStatus.STARTED
    assert ledger.state.balance(client.address) < before


def test_a_duplicate_start_or_finish_is_refused(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor)
    assert send(ledger, ta, start_msg(req)).code == 0
    again = send(ledger, ta, start_msg(req))
    assert failed(again, InferenceCode.INFERENCE_ID_EXISTS) and "already exists" in again.log
    assert send(ledger, executor, finish_msg(req)).code == 0
    paid = ledger.state.work_of(executor.address).coin_balance
    # A second Finish would pay twice on the reference chain (inference.md §2.3); here it is refused.
    assert failed(send(ledger, executor, finish_msg(req)), InferenceCode.INFERENCE_ID_EXISTS)
    assert failed(send(ledger, ta, start_msg(req)), InferenceCode.INFERENCE_ID_EXISTS)
    assert ledger.state.work_of(executor.address).coin_balance == paid


def test_the_sha256_hex_client_scheme_is_accepted(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor, scheme=ClientScheme.SHA256_HEX)
    assert send(ledger, ta, start_msg(req)).code == 0
    assert send(ledger, executor, finish_msg(req)).code == 0


def test_a_model_without_a_sub_group_fails_the_completing_message(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor, model="some/model")
    assert send(ledger, ta, start_msg(req, model="some/model")).code == 0
    finished = send(ledger, executor, finish_msg(req, model="some/model"))
    assert failed(finished, InferenceCode.MODEL_SUB_GROUP_NOT_FOUND)
    assert ledger.state.inferences[req.inference_id].status is InferenceStatus.STARTED  # all or nothing


def test_one_tx_may_start_and_finish_and_is_undone_as_a_whole(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    before = ledger.state.balance(client.address)
    # The Finish's creator is not checked, so the transfer agent may send both (its signer holds both grants).
    req = make_request(client, ta, executor)
    check = ledger.check_tx(tx_signer(ledger, ta).sign([start_msg(req), finish_msg(req, creator=ta.address)]).raw)
    assert check.ok
    ledger.make_block()
    both = ledger.tx(check.hash)
    assert both is not None and both.code == 0
    assert events(both, "inference_finished") == [{"inference_id": req.inference_id}]
    cost = ledger.state.inferences[req.inference_id].actual_cost
    assert ledger.state.balance(client.address) == before - cost
    # The second message fails: the first one's escrow and record are undone with it.
    bad = make_request(client, ta, executor)
    check = ledger.check_tx(tx_signer(ledger, ta).sign(
        [start_msg(bad), finish_msg(bad, creator=ta.address, executor_signature=bad.ta_signature)]).raw)
    assert check.ok
    ledger.make_block()
    failed_tx = ledger.tx(check.hash)
    assert failed_tx is not None and failed(failed_tx, InferenceCode.INVALID_SIGNATURE)
    assert "message index: 1" in failed_tx.log
    assert bad.inference_id not in ledger.state.inferences
    assert ledger.state.balance(client.address) == before - cost
    assert ledger.state.balance(INFERENCE_MODULE_ADDRESS) == cost


# --- the checks, in order, with their codes -----------------------------------------------------------


def test_start_checks_in_order(
    ledger: Ledger, genesis: DevnetGenesis, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor)
    # 1. The transfer agent must be a participant: its signer account is only an account.
    signer_only = replace(ta, account_key=ta.signer_key)
    assert failed(send(ledger, signer_only, start_msg(req, creator=ta.signer_address)),
                  InferenceCode.PARTICIPANT_NOT_FOUND)
    # 2. The requester must be a participant, not just a valid address.
    nobody = SigningKey(b"\x0a" * 32)
    assert failed(send(ledger, ta, start_msg(make_request(nobody, ta, executor))), InferenceCode.PARTICIPANT_NOT_FOUND)
    # 3. Signatures: the developer's, then the transfer agent's.
    forged = sign(SigningKey(b"\x0b" * 32), dev_signed_bytes(req.body.encode(), req.timestamp, ta.address))
    assert failed(send(ledger, ta, start_msg(req, inference_id=forged)), InferenceCode.INVALID_SIGNATURE)
    other_executor = genesis.peers[1].address  # the TA signed for another executor
    assert failed(send(ledger, ta, start_msg(req, assigned_to=other_executor)), InferenceCode.INVALID_SIGNATURE)
    assert failed(send(ledger, ta, start_msg(req, request_timestamp=req.timestamp + 1)),
                  InferenceCode.INVALID_SIGNATURE)
    # 6. The escrow: a requester without funds gets the bank's code.
    poor = make_request(ta.account_key, ta, executor)  # the own participant has no ngonka
    broke = send(ledger, ta, start_msg(poor))
    assert failed(broke, SdkCode.INSUFFICIENT_FUNDS, CODESPACE_SDK)
    assert "requester cannot pay for inference" in broke.log
    assert req.inference_id not in ledger.state.inferences and poor.inference_id not in ledger.state.inferences


def test_finish_checks_in_order(
    ledger: Ledger, genesis: DevnetGenesis, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec
) -> None:
    req = make_request(client, ta, executor)
    stranger = SigningKey(b"\x0c" * 32).address
    for field in ("executed_by", "requested_by", "transferred_by"):
        assert failed(send(ledger, executor, finish_msg(req, **{field: stranger})),
                      InferenceCode.PARTICIPANT_NOT_FOUND), field
    wrong = sign(genesis.peers[1].signer_key, ta_signed_bytes(req.body.encode(), req.timestamp, ta.address,
                                                             executor.address))
    assert failed(send(ledger, executor, finish_msg(req, executor_signature=wrong)), InferenceCode.INVALID_SIGNATURE)
    assert failed(send(ledger, executor, finish_msg(req, transfer_signature=wrong)), InferenceCode.INVALID_SIGNATURE)
    assert failed(send(ledger, executor, finish_msg(req, original_prompt=req.body + " ")),
                  InferenceCode.INVALID_SIGNATURE)
    # Anyone may send a Finish whose signatures verify (the creator is not checked), as on the chain.
    assert send(ledger, genesis.peers[1], finish_msg(req, creator=genesis.peers[1].address)).code == 0


_BAD_ADDRESS = "gonka1notanaddress"
_SHORT_SIGNATURE = "AAAA"


@pytest.mark.parametrize(("builder", "overrides", "code"), [
    ("start", {"requested_by": _BAD_ADDRESS}, SdkCode.INVALID_ADDRESS),
    ("start", {"assigned_to": ""}, SdkCode.INVALID_ADDRESS),
    ("start", {"inference_id": _SHORT_SIGNATURE}, SdkCode.INVALID_REQUEST),
    ("start", {"transfer_signature": "not base64!"}, SdkCode.INVALID_REQUEST),
    ("start", {"model": "  "}, SdkCode.INVALID_REQUEST),
    ("start", {"prompt_hash": ""}, SdkCode.INVALID_REQUEST),
    ("start", {"prompt_payload": ""}, SdkCode.INVALID_REQUEST),
    ("start", {"original_prompt": ""}, SdkCode.INVALID_REQUEST),
    ("start", {"request_timestamp": 0}, SdkCode.INVALID_REQUEST),
    ("finish", {"executed_by": _BAD_ADDRESS}, SdkCode.INVALID_ADDRESS),
    ("finish", {"transferred_by": ""}, SdkCode.INVALID_ADDRESS),
    ("finish", {"response_hash": ""}, SdkCode.INVALID_REQUEST),
    ("finish", {"response_payload": " "}, SdkCode.INVALID_REQUEST),
    ("finish", {"model": ""}, SdkCode.INVALID_REQUEST),
    ("finish", {"request_timestamp": -5}, SdkCode.INVALID_REQUEST),
    ("finish", {"executor_signature": _SHORT_SIGNATURE}, SdkCode.INVALID_REQUEST),
    ("finish", {"inference_id": ""}, SdkCode.INVALID_REQUEST),
])
def test_basic_validity_is_checked_at_checktx(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec, builder: str,
    overrides: dict[str, object], code: int,
) -> None:
    req = make_request(client, ta, executor)
    sender, message = (ta, start_msg(req, **overrides)) if builder == "start" else (
        executor, finish_msg(req, **overrides))
    result = ledger.check_tx(tx_signer(ledger, sender).sign([message]).raw)  # type: ignore[list-item]
    assert (result.code, result.codespace) == (code, CODESPACE_SDK)
    assert ledger.mempool_size == 0


@pytest.mark.parametrize(("overrides", "code"), [
    ({"creator": _BAD_ADDRESS}, SdkCode.INVALID_ADDRESS),
    ({"inference_id": " "}, SdkCode.INVALID_REQUEST),
    ({"id": ""}, SdkCode.INVALID_REQUEST),
    ({"response_payload": ""}, SdkCode.INVALID_REQUEST),
    ({"response_hash": "\t"}, SdkCode.INVALID_REQUEST),
    ({"value": 1.5}, SdkCode.INVALID_REQUEST),
    ({"value": -0.1}, SdkCode.INVALID_REQUEST),
    ({"value": math.nan}, SdkCode.INVALID_REQUEST),
])
def test_validation_basic_validity(ledger: Ledger, genesis: DevnetGenesis, overrides: dict[str, object],
                                   code: int) -> None:
    peer = genesis.peers[1]
    fields: dict[str, object] = dict(creator=peer.address, id="v-1", inference_id="x", response_payload="{}",
                                     response_hash="ab", value=0.5)
    fields.update(overrides)
    result = ledger.check_tx(tx_signer(ledger, peer).sign([itx.MsgValidation(**fields)]).raw)  # type: ignore[arg-type]
    assert (result.code, result.codespace) == (code, CODESPACE_SDK)


_text = st.text(max_size=40)
_ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_uints = st.one_of(st.integers(min_value=0, max_value=1000), st.integers(min_value=0, max_value=2**64 - 1))


def _mostly(valid: object, other: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Usually the valid value, sometimes anything: most messages reach the block, many fail a check."""
    return st.one_of(*[st.just(valid)] * 7, other)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_inference_messages_get_codes_never_a_crash(
    ledger: Ledger, client: ClientSpec, ta: ParticipantSpec, executor: ParticipantSpec, data: st.DataObject
) -> None:
    req = make_request(client, ta, executor)
    addresses = st.sampled_from([req.requester, req.ta, req.executor, SigningKey(b"\x0d" * 32).address])
    anything = st.one_of(_text, addresses, st.just(req.inference_id))
    kind = data.draw(st.sampled_from(["start", "finish", "validation"]))
    if kind == "start":
        message: object = start_msg(
            req, inference_id=data.draw(_mostly(req.inference_id, anything)),
            requested_by=data.draw(_mostly(req.requester, anything)),
            assigned_to=data.draw(_mostly(req.executor, anything)),
            model=data.draw(st.sampled_from([QWQ, QWEN, "", "x"])), max_tokens=data.draw(_uints),
            prompt_token_count=data.draw(_uints), request_timestamp=data.draw(_mostly(req.timestamp, _ints)),
            transfer_signature=data.draw(_mostly(req.ta_signature, anything)),
            original_prompt=data.draw(_mostly(req.body, _text)),
        )
        sender = ta
    elif kind == "finish":
        if data.draw(st.booleans()):
            send(ledger, ta, start_msg(req))
        message = finish_msg(
            req, executed_by=data.draw(_mostly(req.executor, anything)),
            transferred_by=data.draw(_mostly(req.ta, anything)),
            requested_by=data.draw(_mostly(req.requester, anything)),
            prompt_tokens=data.draw(_uints), completion_tokens=data.draw(_uints),
            request_timestamp=data.draw(_mostly(req.timestamp, _ints)),
            executor_signature=data.draw(_mostly(req.executor_signature, anything)),
            model=data.draw(st.sampled_from([QWQ, QWEN, "", "x"])),
            response_hash=data.draw(_mostly("cd" * 32, _text)),
        )
        sender = executor
    else:
        if data.draw(st.booleans()):
            send(ledger, ta, start_msg(req))
            send(ledger, executor, finish_msg(req))
        message = itx.MsgValidation(
            creator=ta.address, id=data.draw(_mostly("v", _text)),
            inference_id=data.draw(_mostly(req.inference_id, anything)),
            response_payload=data.draw(_mostly("{}", _text)), response_hash=data.draw(_mostly("ab", _text)),
            value=data.draw(st.floats(allow_nan=True)), revalidation=data.draw(st.booleans()),
        )
        sender = ta
    check = ledger.check_tx(tx_signer(ledger, sender).sign([message]).raw)  # type: ignore[list-item]
    if not check.ok:
        assert check.codespace == CODESPACE_SDK and check.code in {SdkCode.INVALID_ADDRESS, SdkCode.INVALID_REQUEST}
        return
    block = ledger.make_block()
    [record] = block.txs
    assert record.code != 1, record.log  # 1 = a handler crashed
    assert record.code == 0 or record.codespace in {CODESPACE_INFERENCE, CODESPACE_SDK}


# --- GetRandomExecutor's draw (inference.md §3.1) -----------------------------------------------------


def test_the_draw_follows_the_weights() -> None:
    rng = random.Random(1234)
    candidates = [Candidate("a", 10), Candidate("b", 30), Candidate("c", 60), Candidate("d", 0)]
    counts = Counter(draw(candidates, rng) for _ in range(20_000))
    assert counts["d"] == 0
    for name, share in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        assert abs(counts[name] / 20_000 - share) < 0.015
    with pytest.raises(ExecutorUnavailable):
        draw([Candidate("z", 0)], rng)


def test_candidates_are_the_sub_group_and_the_poc_slot_filter_applies_from_poc_start_through_the_switch(
    ledger: Ledger, genesis: DevnetGenesis
) -> None:
    state = ledger.state
    sub = ledger.epoch_group(1, QWEN)
    assert sub is not None
    everyone = {vw.member_address: vw.weight for vw in sub.validation_weights}
    assert {c.address: c.weight for c in executor_candidates(state, QWEN, READY)} == everyone
    with pytest.raises(ExecutorUnavailable, match="sub-group"):
        executor_candidates(state, "no/such-model", READY)
    # Give exactly one member a POC_SLOT node for the model in the effective epoch's allocation.
    serving = genesis.peers[0].address
    active = []
    for p in state.active[1]:
        groups = list(p.ml_nodes)
        i = p.models.index(QWEN)
        groups[i] = ModelMLNodes(ml_nodes=tuple(n.with_poc_slot(p.index == serving) for n in groups[i].ml_nodes))
        active.append(replace(p, ml_nodes=tuple(groups)))
    state.active[1] = tuple(active)
    peers = PeerSimulator(ledger, genesis)
    seen: dict[int, set[str]] = {}
    while ledger.height < 95:
        peers.on_block(ledger.make_block())
        h = ledger.height
        try:
            seen[h] = {c.address for c in executor_candidates(state, QWEN, h)}
        except ExecutorUnavailable:
            seen[h] = set()
    assert ledger.effective_epoch().index == 2  # switched at 93
    assert seen[79] == set(everyone)  # Inference phase of epoch 1
    for h in range(80, 94):  # PoC of epoch 2 through set-new-validators (inclusive), epoch 1's allocation
        assert seen[h] == ({serving} if h < 93 else seen[93]), h
    assert seen[94] == {vw.member_address for vw in ledger.epoch_group(2, QWEN).validation_weights}  # type: ignore[union-attr]


def test_draws_during_poc_only_pick_poc_slot_members(ledger: Ledger, genesis: DevnetGenesis) -> None:
    state = ledger.state
    serving = genesis.peers[1].address
    state.active[1] = tuple(
        replace(p, ml_nodes=tuple(
            ModelMLNodes(ml_nodes=tuple(n.with_poc_slot(p.index == serving) for n in g.ml_nodes)) for g in p.ml_nodes
        )) for p in state.active[1]
    )
    peers = PeerSimulator(ledger, genesis)
    while ledger.height < 82:
        peers.on_block(ledger.make_block())
    rng = random.Random(7)
    picks = Counter(draw(executor_candidates(state, QWQ, 82), rng) for _ in range(2000))
    assert set(picks) == {serving}
    after = Counter(draw(executor_candidates(state, QWQ, 70), rng) for _ in range(4000))
    sub = ledger.epoch_group(1, QWQ)
    assert sub is not None
    total = sum(vw.weight for vw in sub.validation_weights)
    for vw in sub.validation_weights:
        assert abs(after[vw.member_address] / 4000 - vw.weight / total) < 0.03
