"""The outbox against the devnet chain: real signing, real gRPC broadcast, the chain's own answers.

CheckTx faults are injected on the devnet (a full mempool, a fee error) because a healthy chain does not
produce them on demand; the in-block failure is real (a PoC batch for a stage that is not the upcoming one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from waiting import wait_for

from dapi.chain.broadcast import GrpcBroadcaster
from dapi.chain.outbox import Outbox
from dapi.chain.query import ChainQuery, GrpcTransport
from dapi.chain.tx import TxSigner
from dapi.config import OutboxConfig
from dapi.devnet import SimulatedNetwork
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch, MsgSubmitSeed
from dapi.metrics import Metrics
from dapi.node_store import NodeStore
from dapi.server.admin.app import create_admin_app

FAST = OutboxConfig(tx_timeout=2.0, poll_interval=0.02, retry_backoff_max=0.05)


@pytest.fixture
async def chain_and_outbox(tmp_path: Path) -> AsyncIterator[tuple[SimulatedNetwork, Outbox]]:
    async with SimulatedNetwork(block_time=0.05, participants=2, nodes_per_participant=1) as devnet:
        query = ChainQuery(GrpcTransport(devnet.grpc_target))
        own = devnet.own

        async def signer() -> TxSigner:
            account = await query.account(own.signer_address)
            return TxSigner(own.signer_key, chain_id=devnet.genesis.chain_id, account_number=account.account_number,
                            account_address=own.address, timeout_seconds=FAST.tx_timeout)

        outbox = Outbox(tmp_path / "outbox.sqlite", broadcaster=GrpcBroadcaster(devnet.grpc_target),
                        signer_factory=signer, settings=FAST, metrics=Metrics())
        await outbox.start()
        try:
            yield devnet, outbox
        finally:
            await outbox.stop()
            await query.aclose()


async def test_retriable_rejection_then_acceptance(chain_and_outbox: tuple[SimulatedNetwork, Outbox]) -> None:
    devnet, outbox = chain_and_outbox
    own = devnet.own.address
    devnet.inject_checktx_fault(2, code=20)  # "mempool is full", twice
    await outbox.submit(MsgSubmitSeed(creator=own, epoch_index=77, signature="ab" * 64))
    await wait_for(lambda: any(s.participant == own for s in devnet.ledger.seeds(77)), what="the seed on chain", timeout=20)

    async def landed() -> bool:
        return len(await outbox.landed()) == 1

    await wait_for(landed, what="the outbox to see it landed", timeout=20)
    [row] = await outbox.landed()
    assert row.attempts == 3 and row.height is not None
    assert outbox.metrics is not None and outbox.metrics.tx_retries._value.get() >= 2
    assert await outbox.dead_letters() == []


async def test_non_retriable_rejection_is_dead_lettered_and_visible(chain_and_outbox: tuple[SimulatedNetwork, Outbox],
                                                                   tmp_path: Path) -> None:
    devnet, outbox = chain_and_outbox
    own = devnet.own.address
    devnet.inject_checktx_fault(1, code=13, log="insufficient fee")
    await outbox.submit(MsgSubmitSeed(creator=own, epoch_index=78, signature="cd" * 64))

    async def dead() -> bool:
        return len(await outbox.dead_letters()) == 1

    await wait_for(dead, what="the dead letter", timeout=20)
    [letter] = await outbox.dead_letters()
    assert (letter.stage, letter.code, letter.codespace, letter.log) == ("checktx", 13, "sdk", "insufficient fee")
    assert devnet.ledger.seeds(78) == []
    app = create_admin_app(broker=None, store=NodeStore(tmp_path / "n.json"), outbox=outbox)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
        view = (await client.get("/admin/v1/outbox/dead-letters")).json()["dead_letters"]
        counts = (await client.get("/admin/v1/outbox")).json()["counts"]
    assert [(d["code"], d["log"], d["stage"]) for d in view] == [(13, "insufficient fee", "checktx")]
    assert counts["dead"] == 1


async def test_failure_in_the_block_is_dead_lettered_with_the_chain_code(chain_and_outbox: tuple[SimulatedNetwork, Outbox]) -> None:
    devnet, outbox = chain_and_outbox
    # Stage 7 is never an upcoming epoch's PoC start: the chain refuses the message when it makes the block.
    await outbox.submit(MsgSubmitPocBatch(creator=devnet.own.address, poc_stage_start_block_height=7,
                                          batch_id="late-1", nonces=[1], dist=[0.5], node_id="node1"))

    async def dead() -> bool:
        return len(await outbox.dead_letters()) == 1

    await wait_for(dead, what="the dead letter", timeout=20)
    [letter] = await outbox.dead_letters()
    assert letter.stage == "deliver" and letter.codespace == "inference" and letter.code != 0 and letter.log
    assert (await outbox.counts())["landed"] == 0
