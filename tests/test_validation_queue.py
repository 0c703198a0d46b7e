"""The pure pieces of the daemon's validation: events of a height, the claim response, the durable queue."""

from __future__ import annotations

from pathlib import Path

from dapi.chain.rpc import BlockTxResult, TxEvent
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExecResponse
from dapi.gen.cosmos.base.abci.v1beta1.abci_pb2 import TxMsgData
from dapi.gen.inference.inference.tx_pb2 import MsgClaimRewardsResponse
from dapi.inference.claim_gate import claim_response
from dapi.inference.validation_queue import Selected, ValidationQueue
from dapi.inference.validation_sampler import events_of


def _tx(code: int, *events: tuple[str, tuple[tuple[str, str], ...]]) -> BlockTxResult:
    return BlockTxResult(code=code, events=tuple(TxEvent(t, a) for t, a in events))


def test_events_of_a_height_read_only_successful_txs() -> None:
    results = [
        _tx(0, ("message", (("module", "inference"),)), ("inference_finished", (("inference_id", "a"),))),
        _tx(1133, ("inference_finished", (("inference_id", "failed-tx"),))),
        _tx(0, ("inference_finished", (("inference_id", "b"), ("inference_id", "a"))),
            ("inference_validation", (("inference_id", "c"), ("validator", "v"), ("needs_revalidation", "true"),
                                      ("passed", "false"))),
            ("inference_validation", (("inference_id", "d"), ("needs_revalidation", "false")))),
    ]
    assert events_of(results) == (["a", "b"], ["c"])


def test_the_claim_response_is_read_directly_or_inside_msg_exec() -> None:
    paid = MsgClaimRewardsResponse(amount=42, result="Rewards claimed successfully")
    direct = TxMsgData()
    direct.msg_responses.add(type_url="/inference.inference.MsgClaimRewardsResponse", value=paid.SerializeToString())
    assert claim_response(direct.SerializeToString()) == paid
    unpaid = MsgClaimRewardsResponse(amount=0, result="Inference not validated")
    wrapped = TxMsgData()
    wrapped.msg_responses.add(type_url="/cosmos.authz.v1beta1.MsgExecResponse",
                              value=MsgExecResponse(results=[unpaid.SerializeToString()]).SerializeToString())
    assert claim_response(wrapped.SerializeToString()) == unpaid
    assert claim_response(b"\xff\xff") is None
    assert claim_response(TxMsgData().SerializeToString()) is None


async def test_selections_and_the_scan_cursor_survive_a_reopen_and_are_counted(tmp_path: Path) -> None:
    q = ValidationQueue(tmp_path / "validations.sqlite")
    await q.open()
    assert await q.run(q.s.scanned) is None
    picks = [Selected("i1", 3, "m", True, 0.98, 10), Selected("i2", 3, "m", False, 0.98, 10),
             Selected("i3", 3, "m", True, 0.98, 11)]
    assert await q.run(q.s.record, picks, 11) == 3
    assert await q.run(q.s.record, picks[:1], 12) == 0  # already known: kept as it is
    due = await q.run(q.s.due, 1e18, 10, set())
    assert [i.inference_id for i in due] == ["i1", "i3", "i2"]  # required first
    await q.run(q.s.mark_sent, "i1", False, 7, 0.5)  # below the threshold: a failed validation
    await q.run(q.s.mark_sent, "i3", False, 8, 1.0)
    await q.run(q.s.set_state, "i3", False, "landed")
    await q.close()

    again = ValidationQueue(tmp_path / "validations.sqlite")
    await again.open()
    assert await again.run(again.s.scanned) == 12
    assert await again.run(again.s.in_flight) == [("i1", False, 7)]
    counts = await again.run(again.s.counts)
    assert {k: counts[k] for k in ("selected", "pending", "sent", "landed", "failed")} == \
        {"selected": 3, "pending": 2, "sent": 2, "landed": 1, "failed": 1}
    epoch = await again.run(again.s.epoch_counts, 3)
    assert (epoch["required"], epoch["required_pending"], epoch["landed"]) == (2, 1, 1)
    await again.run(again.s.record, [Selected("i2", 3, "m", False, 0.98, 13, revalidation=True)], 13)
    assert await again.run(again.s.abandon_epoch, 3, "claimed") == 1  # i2, still queued; not its re-validation
    assert (await again.run(again.s.counts))["abandoned"] == 1
    assert [(i.inference_id, i.revalidation) for i in await again.run(again.s.due, 1e18, 10, set())] == [("i2", True)]
    await again.close()


async def test_claims_move_from_waiting_to_sent_to_their_result(tmp_path: Path) -> None:
    q = ValidationQueue(tmp_path / "validations.sqlite")
    await q.open()
    await q.run(q.s.open_claim, 4, 100, 140)
    await q.run(q.s.open_claim, 5, 200, 240)
    await q.run(q.s.open_claim, 4, 110, 150)  # opened once: the first opening is kept
    assert [(c.epoch, c.opened_at, c.deadline) for c in await q.run(q.s.claims, ("waiting",))] == \
        [(4, 100, 140), (5, 200, 240)]
    assert await q.run(q.s.last_claim) is None  # a waiting claim is not "the last claim"
    await q.run(q.s.claim_sent, 4, 9, True, 2)
    sent = await q.run(q.s.claims, ("sent",))
    assert [(c.epoch, c.outbox_row, c.forced, c.missing) for c in sent] == [(4, 9, True, 2)]
    await q.run(q.s.claim_result, 4, "landed", 0, 0, "Inference not validated")
    last = await q.run(q.s.last_claim)
    assert last is not None and last.as_json() == {"epoch": 4, "state": "landed", "code": 0, "amount": 0,
                                                   "result": "Inference not validated", "forced": True,
                                                   "missing_validations": 2}
    assert [c.epoch for c in await q.run(q.s.claims, ("waiting", "sent"))] == [5]
    await q.close()
