"""The durable outbox: commit before answer, send, observe, retry what can succeed, dead-letter the rest.

The chain side is a scripted broadcaster: these are the rejections and losses a real chain produces
only by accident (mempool full, a tx that never lands, a failed DeliverTx), needed here on demand.
End-to-end delivery against the devnet chain is tested with the daemon.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dapi.chain.errors import ChainNotFound, ChainUnavailable
from dapi.chain.keys import SigningKey
from dapi.chain.outbox import Outbox, OutboxClosed
from dapi.chain.rpc import BroadcastResult, TxResult
from dapi.chain.tx import TxSigner, decode_tx
from dapi.config import OutboxConfig
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExec
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch
from dapi.metrics import Metrics

MakeOutbox = Callable[..., Awaitable[Outbox]]

ACCOUNT_KEY = SigningKey.from_hex("a6703374c8c14829bccb1eb13ecdb1ae7703d9e8b3e0a7f44b94bdfcebb0be32")
SIGNER_KEY = SigningKey.from_hex("11" * 32)
FAST = OutboxConfig.model_validate({"tx_timeout": 0.3, "poll_interval": 0.02, "retry_backoff_max": 0.05})


@dataclass
class ScriptedChain:
    """Answers broadcasts from a script (default: accept) and includes accepted txs at once."""

    checktx: list[tuple[int, str]] = field(default_factory=list)  # consumed first to last
    deliver_code: int = 0
    swallow: int = 0  # accept this many txs but never include them
    unavailable: int = 0  # fail this many broadcasts at the transport level
    broadcasts: list[bytes] = field(default_factory=list)
    included: dict[str, TxResult] = field(default_factory=dict)

    async def broadcast(self, raw: bytes) -> BroadcastResult:
        if self.unavailable:
            self.unavailable -= 1
            raise ChainUnavailable("connection refused")
        self.broadcasts.append(raw)
        tx = decode_tx(raw)
        code, log = self.checktx.pop(0) if self.checktx else (0, "")
        if code in (0, 19):
            if self.swallow:
                self.swallow -= 1
            elif tx.hash not in self.included:
                self.included[tx.hash] = TxResult(
                    hash=tx.hash,
                    height=len(self.broadcasts),
                    code=self.deliver_code,
                    log="" if self.deliver_code == 0 else "poc batch outside window",
                    codespace="inference" if self.deliver_code else "",
                )
        return BroadcastResult(code=code, log=log, hash=tx.hash, codespace="sdk" if code else "")

    async def get_tx(self, hash_hex: str) -> TxResult:
        if hash_hex not in self.included:
            raise ChainNotFound(f"tx ({hash_hex}) not found")
        return self.included[hash_hex]

    async def aclose(self) -> None:
        return None

    def sent_messages(self) -> list[MsgSubmitPocBatch]:
        out = []
        for raw in self.broadcasts:
            for eff in decode_tx(raw).effective_messages:
                assert isinstance(eff.message, MsgSubmitPocBatch)
                out.append(eff.message)
        return out


def batch(batch_id: str, n: int = 3) -> MsgSubmitPocBatch:
    return MsgSubmitPocBatch(
        creator=ACCOUNT_KEY.address,
        poc_stage_start_block_height=80,
        batch_id=batch_id,
        nonces=list(range(n)),
        dist=[0.5] * n,
        node_id="node-1",
    )


def signer_factory(key: SigningKey = ACCOUNT_KEY) -> Callable[[], asyncio.Future[TxSigner]]:
    async def make() -> TxSigner:
        return TxSigner(
            key,
            chain_id="gonka-testnet",
            account_number=7,
            account_address=ACCOUNT_KEY.address,
            timeout_seconds=FAST.tx_timeout,
        )

    return make  # type: ignore[return-value]


async def wait_counts(outbox: Outbox, **expected: int) -> dict[str, int]:
    deadline = asyncio.get_running_loop().time() + 10.0
    while True:
        counts = await outbox.counts()
        if all(counts[k] == v for k, v in expected.items()):
            return counts
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"outbox counts {counts}, expected {expected}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def make_outbox(tmp_path: Path) -> AsyncIterator[Callable[..., asyncio.Future[Outbox]]]:
    made: list[Outbox] = []

    async def make(chain: ScriptedChain | None, *, key: SigningKey = ACCOUNT_KEY, start: bool = True) -> Outbox:
        outbox = Outbox(
            tmp_path / "outbox.sqlite",
            broadcaster=chain,
            signer_factory=signer_factory(key) if chain else None,
            settings=FAST,
            metrics=Metrics(),
        )
        await outbox.open()
        if start:
            await outbox.start()
        made.append(outbox)
        return outbox

    yield make  # type: ignore[misc]
    for outbox in made:
        await outbox.stop()


async def test_submit_returns_only_after_the_row_is_on_disk(make_outbox: MakeOutbox, tmp_path: Path) -> None:
    outbox = await make_outbox(None)  # read-only: nothing is sent, everything is kept
    row_id = await outbox.submit(batch("b-1"))
    with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
        stored = db.execute("SELECT type_url, body, state FROM messages WHERE id = ?", (row_id,)).fetchone()
    assert stored[0] == "/inference.inference.MsgSubmitPocBatch" and stored[2] == "pending"
    assert MsgSubmitPocBatch.FromString(stored[1]) == batch("b-1")


async def test_accepted_messages_are_sent_and_land(make_outbox: MakeOutbox) -> None:
    chain = ScriptedChain()
    outbox = await make_outbox(chain)
    ids = await asyncio.gather(*(outbox.submit(batch(f"b-{i}")) for i in range(20)))
    assert len(set(ids)) == 20
    await wait_counts(outbox, landed=20, pending=0, sent=0, dead=0)
    assert sorted(m.batch_id for m in chain.sent_messages()) == sorted(f"b-{i}" for i in range(20))
    assert outbox.metrics is not None and outbox.metrics.outbox_depth._value.get() == 0
    tx = decode_tx(chain.broadcasts[0])
    assert tx.unordered and tx.sequence == 0 and tx.timeout_timestamp_ns is not None


async def test_signer_other_than_account_wraps_in_msg_exec(make_outbox: MakeOutbox) -> None:
    chain = ScriptedChain()
    outbox = await make_outbox(chain, key=SIGNER_KEY)
    await outbox.submit(batch("b-authz"))
    await wait_counts(outbox, landed=1)
    tx = decode_tx(chain.broadcasts[0])
    assert isinstance(tx.messages[0], MsgExec) and tx.messages[0].grantee == SIGNER_KEY.address
    inner = tx.effective_messages[0]
    assert isinstance(inner.message, MsgSubmitPocBatch)
    assert inner.grantee == SIGNER_KEY.address and inner.message.creator == ACCOUNT_KEY.address


async def test_retriable_rejection_is_retried_until_accepted(make_outbox: MakeOutbox) -> None:
    chain = ScriptedChain(checktx=[(20, "mempool is full"), (20, "mempool is full")])
    outbox = await make_outbox(chain)
    await outbox.submit(batch("b-retry"))
    await wait_counts(outbox, landed=1, dead=0)
    assert len(chain.broadcasts) == 3  # two rejections, then the accepted one
    assert [m.batch_id for m in chain.sent_messages()] == ["b-retry"] * 3


async def test_transport_failure_is_retried(make_outbox: MakeOutbox) -> None:
    chain = ScriptedChain(unavailable=3)
    outbox = await make_outbox(chain)
    await outbox.submit(batch("b-down"))
    await wait_counts(outbox, landed=1)
    assert chain.unavailable == 0


async def test_non_retriable_rejection_is_dead_lettered_with_code_and_log(make_outbox: MakeOutbox) -> None:
    chain = ScriptedChain(checktx=[(13, "insufficient fee")])
    outbox = await make_outbox(chain)
    await outbox.submit(batch("b-dead"))
    await wait_counts(outbox, dead=1, pending=0, sent=0, landed=0)
    [dead] = await outbox.dead_letters()
    assert (dead.stage, dead.code, dead.codespace, dead.log) == ("checktx", 13, "sdk", "insufficient fee")
    assert dead.message() == batch("b-dead")
    assert len(chain.broadcasts) == 1  # never re-sent
    assert outbox.metrics is not None
    assert outbox.metrics.tx_failures.labels(stage="checktx", code="13")._value.get() == 1


async def test_already_in_mempool_is_observed_not_dead_lettered(make_outbox: MakeOutbox) -> None:
    chain = ScriptedChain(checktx=[(19, "tx already in mempool")])
    outbox = await make_outbox(chain)
    await outbox.submit(batch("b-19"))
    await wait_counts(outbox, landed=1, dead=0)


async def test_failure_inside_a_block_is_dead_lettered_not_landed(make_outbox: MakeOutbox) -> None:
    chain = ScriptedChain(deliver_code=1107)
    outbox = await make_outbox(chain)
    await outbox.submit(batch("b-late"))
    counts = await wait_counts(outbox, dead=1)
    assert counts["landed"] == 0
    [dead] = await outbox.dead_letters()
    assert (dead.stage, dead.code, dead.log) == ("deliver", 1107, "poc batch outside window")
    # Never sent again. The outbox re-sends a message only once its tx's own timeout has passed. A later
    # message whose first tx the chain loses is re-sent exactly that way, so once it has landed, the failed
    # tx's timeout has passed too and the observer and the sender have both run since.
    chain.deliver_code, chain.swallow = 0, 1
    await outbox.submit(batch("b-after"))
    await wait_counts(outbox, landed=1, dead=1, pending=0, sent=0)
    assert [m.batch_id for m in chain.sent_messages()] == ["b-late", "b-after", "b-after"]


async def test_tx_never_included_is_sent_again_after_its_timeout(make_outbox: MakeOutbox) -> None:
    chain = ScriptedChain(swallow=1)
    outbox = await make_outbox(chain)
    await outbox.submit(batch("b-lost"))
    await wait_counts(outbox, landed=1)
    first, second = (decode_tx(raw) for raw in chain.broadcasts)
    assert first.hash != second.hash  # signed afresh with a later timeout
    assert second.timeout_timestamp_ns > first.timeout_timestamp_ns  # type: ignore[operator]


async def test_messages_survive_a_restart_and_are_sent_after_it(make_outbox: MakeOutbox) -> None:
    read_only = await make_outbox(None)
    for i in range(5):
        await read_only.submit(batch(f"b-{i}"))
    await read_only.stop()
    chain = ScriptedChain()
    outbox = await make_outbox(chain)
    await wait_counts(outbox, landed=5)
    assert sorted(m.batch_id for m in chain.sent_messages()) == [f"b-{i}" for i in range(5)]


async def test_a_stopped_outbox_refuses_new_messages(make_outbox: MakeOutbox) -> None:
    outbox = await make_outbox(ScriptedChain())
    await outbox.stop()
    with pytest.raises(OutboxClosed):
        await outbox.submit(batch("late"))


async def test_stop_commits_everything_already_accepted(make_outbox: MakeOutbox, tmp_path: Path) -> None:
    outbox = await make_outbox(None)
    pending = [asyncio.ensure_future(outbox.submit(batch(f"s-{i}", 1000))) for i in range(50)]
    await asyncio.sleep(0)
    await outbox.stop()
    ids = await asyncio.gather(*pending)
    assert len(set(ids)) == 50
    with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 50


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, which leaves new files readable by everyone."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_pending_transactions_are_private_to_the_daemons_user(tmp_path: Path, umask_022: None) -> None:
    folder = tmp_path / "fresh" / "data"
    outbox = Outbox(folder / "outbox.sqlite", broadcaster=None, signer_factory=None)
    await outbox.open()
    try:
        await outbox.submit(batch("b-1"))
        files = [folder / name for name in ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm")]
        assert all(f.exists() for f in files)  # WAL mode: all three hold pending transactions
        assert mode(folder) == 0o700
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await outbox.stop()


async def test_an_older_world_readable_outbox_is_tightened(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "outbox.sqlite"
    for name in ("outbox.sqlite", "outbox.sqlite-wal"):
        (tmp_path / name).touch(mode=0o644)
    outbox = Outbox(path, broadcaster=None, signer_factory=None)
    await outbox.open()
    try:
        assert mode(path) == 0o600 and mode(tmp_path / "outbox.sqlite-wal") == 0o600
    finally:
        await outbox.stop()
