"""Inference validation on the devnet chain (reference/inference.md §4.4-§4.5): MsgValidation passes above the
model snapshot's threshold and shares the work, a failure invalidates directly with a refund, the executor's
status follows its record, and a reward claim pays nothing while a required validation is missing.

The simulated peers run the epochs (peer1 and peer2 form epoch 1 with equal weight in both models' sub-groups;
the QwQ nodes keep serving during PoC, the Qwen2.5 ones mine). With two members and no traffic, the other
member must validate every inference (p = 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

import pytest
from inference_msgs import QWEN, QWQ, Request, finish_msg, make_request, start_msg

from dapi.chain.tx import TxSigner
from dapi.devnet.genesis import DevnetGenesis, ParticipantSpec, load_genesis
from dapi.devnet.ledger import CODESPACE_INFERENCE, InferenceCode, Ledger, TxRecord
from dapi.devnet.ledger.inferences import InferenceStatus, ParticipantStatus
from dapi.devnet.ledger.state import INFERENCE_MODULE_ADDRESS
from dapi.devnet.ledger.validations import missed_validations, share_work
from dapi.devnet.peers import PeerSimulator
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExecResponse
from dapi.gen.cosmos.base.abci.v1beta1.abci_pb2 import TxMsgData
from dapi.gen.inference.inference import tx_pb2 as itx

READY = 55


class Chain:
    """A ledger driven by the simulated peers, with helpers to send the inference path's messages."""

    def __init__(self) -> None:
        self.genesis: DevnetGenesis = load_genesis(None)
        self.ledger = Ledger(self.genesis)
        self.peers = PeerSimulator(self.ledger, self.genesis)
        self.client = self.genesis.clients[0]
        self.ta = self.genesis.own
        self.executor, self.validator = self.genesis.peers
        self._nonces = count(1, 2)

    def advance_to(self, height: int) -> None:
        while self.ledger.height < height:
            self.peers.on_block(self.ledger.make_block())

    def submit(self, who: ParticipantSpec, message: object) -> str:
        """CheckTx only: the tx waits in the mempool for the next block; returns its hash."""
        account = self.ledger.account(who.signer_address)
        assert account is not None
        signer = TxSigner(who.signer_key, chain_id=self.ledger.chain_id, account_number=account.account_number,
                          account_address=who.address, clock_ns=self.ledger.now_ns)
        check = self.ledger.check_tx(signer.sign([message]).raw)  # type: ignore[list-item]
        assert check.ok, check
        return check.hash

    def send(self, who: ParticipantSpec, message: object) -> TxRecord:
        tx_hash = self.submit(who, message)
        self.advance_to(self.ledger.height + 1)
        record = self.ledger.tx(tx_hash)
        assert record is not None
        return record

    def complete(self, model: str = QWQ, executor: ParticipantSpec | None = None) -> Request:
        """Start and Finish in one block (delivered in that order)."""
        executor = executor or self.executor
        # Ids fixed per chain, whatever ran before: which inferences the sampling picks depends on them.
        req = make_request(self.client, self.ta, executor, model=model, nonce=next(self._nonces))
        hashes = [self.submit(self.ta, start_msg(req, model=model)), self.submit(executor, finish_msg(req, model=model))]
        self.advance_to(self.ledger.height + 1)
        assert [self.ledger.tx(h).code for h in hashes] == [0, 0]  # type: ignore[union-attr]
        return req

    def validate(self, req: Request, value: float, who: ParticipantSpec | None = None,
                 revalidation: bool = False) -> TxRecord:
        who = who or self.validator
        return self.send(who, itx.MsgValidation(creator=who.address, id="val-1", inference_id=req.inference_id,
                                                response_payload="{}", response_hash="ab", value=value,
                                                revalidation=revalidation))


@pytest.fixture
def chain() -> Iterator[Chain]:
    chain = Chain()
    chain.advance_to(READY)
    yield chain


def claim_response(record: TxRecord) -> itx.MsgClaimRewardsResponse:
    [packed] = TxMsgData.FromString(record.data).msg_responses
    [inner] = MsgExecResponse.FromString(packed.value).results
    return itx.MsgClaimRewardsResponse.FromString(inner)


def test_share_work_splits_equally_and_gives_the_remainder_to_the_first_worker() -> None:
    # One validator: the executor gives up floor(C/2).
    assert share_work({"e": 101}, ["e"], ["v"], 101) == {"e": 51, "v": 50}
    # A second validator: three equal shares of 90.
    assert share_work({"e": 45, "v1": 45}, ["e", "v1"], ["v2"], 90) == {"e": 30, "v1": 30, "v2": 30}


def test_a_validation_above_the_threshold_validates_and_shares_the_work(chain: Chain) -> None:
    req = chain.complete()
    cost = chain.ledger.state.inferences[req.inference_id].actual_cost
    record = chain.validate(req, 0.99)
    assert record.code == 0
    inference = chain.ledger.state.inferences[req.inference_id]
    assert (inference.status, inference.validated_by) == (InferenceStatus.VALIDATED, (chain.validator.address,))
    executor = chain.ledger.state.work_of(chain.executor.address)
    assert executor.coin_balance == cost - cost // 2
    assert chain.ledger.state.work_of(chain.validator.address).coin_balance == cost // 2
    assert executor.current_epoch_stats.validated_inferences == 1
    assert executor.status is ParticipantStatus.RAMPING  # fewer than 10 inferences so far
    assert chain.ledger.state.epoch_validations[(1, chain.validator.address)] == [req.inference_id]
    [event] = [dict(e.attributes) for e in record.events if e.type == "inference_validation"]
    assert event == {"inference_id": req.inference_id, "validator": chain.validator.address,
                     "needs_revalidation": "false", "passed": "true"}


def test_a_failed_validation_invalidates_directly_and_refunds_the_requester(chain: Chain) -> None:
    before = chain.ledger.state.balance(chain.client.address)
    req = chain.complete()
    cost = chain.ledger.state.inferences[req.inference_id].actual_cost
    assert chain.ledger.state.balance(chain.client.address) == before - cost
    record = chain.validate(req, 0.98)  # the threshold itself fails: passing is strictly above it
    assert record.code == 0
    inference = chain.ledger.state.inferences[req.inference_id]
    assert inference.status is InferenceStatus.INVALIDATED
    assert chain.ledger.state.balance(chain.client.address) == before
    assert chain.ledger.state.balance(INFERENCE_MODULE_ADDRESS) == 0
    executor = chain.ledger.state.work_of(chain.executor.address)
    assert (executor.coin_balance, executor.consecutive_invalid_inferences) == (0, 1)
    assert executor.current_epoch_stats.invalidated_inferences == 1
    [event] = [dict(e.attributes) for e in record.events if e.type == "inference_validation"]
    assert (event["passed"], event["needs_revalidation"]) == ("false", "false")
    # Validating it again is accepted and changes nothing.
    assert chain.validate(req, 1.0, who=chain.executor).code == 0
    assert chain.ledger.state.inferences[req.inference_id].status is InferenceStatus.INVALIDATED


def test_validation_checks_and_codes(chain: Chain) -> None:
    missing = make_request(chain.client, chain.ta, chain.executor)
    assert (chain.validate(missing, 1.0).code, chain.validate(missing, 1.0).codespace) == (
        InferenceCode.INFERENCE_NOT_FOUND, CODESPACE_INFERENCE)
    started = make_request(chain.client, chain.ta, chain.executor)
    assert chain.send(chain.ta, start_msg(started)).code == 0
    assert chain.validate(started, 1.0).code == InferenceCode.INFERENCE_NOT_FINISHED
    done = chain.complete()
    assert chain.validate(done, 1.0, who=chain.executor).code == InferenceCode.CANNOT_VALIDATE_OWN_INFERENCE
    # A revalidation has no vote to cast on the devnet (failures invalidate directly): a no-op.
    assert chain.validate(done, 0.1, revalidation=True).code == 0
    assert chain.ledger.state.inferences[done.inference_id].status is InferenceStatus.FINISHED
    assert (1, chain.validator.address) not in chain.ledger.state.epoch_validations


def test_the_executor_status_follows_its_validations(chain: Chain) -> None:
    for _ in range(10):
        assert chain.validate(chain.complete(), 1.0).code == 0
    assert chain.ledger.state.work_of(chain.executor.address).status is ParticipantStatus.ACTIVE
    # Five invalid inferences in a row are too unlikely at a 5% false positive rate.
    for n in range(1, 6):
        assert chain.validate(chain.complete(), 0.0).code == 0
        status = chain.ledger.state.work_of(chain.executor.address).status
        assert (status is ParticipantStatus.INVALID) == (n >= 2), n  # already far above 5% after two
    assert chain.ledger.state.work_of(chain.executor.address).consecutive_invalid_inferences == 5


def test_a_claim_with_a_missing_validation_pays_nothing_until_it_is_sent(chain: Chain) -> None:
    req = chain.complete()
    cost = chain.ledger.state.inferences[req.inference_id].actual_cost
    # An unvalidated inference made during the next PoC is required only for a model the validator kept
    # serving then (a POC_SLOT node); for the others its nodes were mining.
    chain.advance_to(84)
    late_qwen = chain.complete(model=QWEN)
    late_qwq = chain.complete(model=QWQ)
    assert chain.ledger.state.validation_details[(1, late_qwen.inference_id)].created_at_block_height >= 80
    seed = chain.peers.seed_value(chain.validator.name, 1)
    # Which models the validator keeps serving during that PoC depends on the PoC weights (the devnet mines
    # by wall clock), so the expectation is read from the allocation in force.
    (validator,) = [p for p in chain.ledger.active_participants(1) if p.index == chain.validator.address]
    serves = {m for m in validator.models if any(n.is_active_during_poc for n in validator.nodes_for_model(m))}
    late = [r.inference_id for r, m in ((late_qwen, QWEN), (late_qwq, QWQ)) if m in serves]
    assert missed_validations(chain.ledger.state, chain.validator.address, 1, seed) == sorted(
        [req.inference_id, *late])
    assert missed_validations(chain.ledger.state, chain.executor.address, 1,
                              chain.peers.seed_value(chain.executor.name, 1)) == []  # own inferences

    chain.advance_to(95)  # settled at 91, switched at 93, the peers claim epoch 1 at 94
    claims = {tx.peer: chain.ledger.tx(tx.check.hash) for tx in chain.peers.txs if tx.kind == "claim_rewards"}
    unpaid, paid = claims[chain.validator.name], claims[chain.executor.name]
    assert unpaid is not None and paid is not None
    assert unpaid.code == 0  # as the chain: ErrValidationsMissed is only logged
    assert (claim_response(unpaid).amount, claim_response(unpaid).result) == (0, "Inference not validated")
    reward = chain.ledger.rewards(1)
    assert reward is not None
    work = chain.ledger.state.settled_work[1][chain.executor.address]
    assert work == 3 * cost  # all three inferences were paid to the executor and settled
    assert claim_response(paid).amount == reward[chain.executor.address].amount + work
    assert claim_response(paid).result == "Rewards claimed successfully"
    assert chain.ledger.state.work_of(chain.executor.address).coin_balance == 0  # settled

    # The validations land late (the chain takes them), and the claim is sent again: now it pays.
    for required in [req, *(r for r in (late_qwen, late_qwq) if r.inference_id in late)]:
        assert chain.validate(required, 1.0).code == 0
    again = chain.send(chain.validator, itx.MsgClaimRewards(creator=chain.validator.address, seed=seed,
                                                            epoch_index=1))
    assert again.code == 0
    assert claim_response(again).amount == reward[chain.validator.address].amount > 0
