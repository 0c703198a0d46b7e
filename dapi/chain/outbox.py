"""The durable transaction outbox: nothing accepted is lost, whatever happens to the process.

A message is committed to sqlite (WAL) before ``submit`` returns, so an ML node's batch answered 200
survives a SIGKILL. Three owned tasks then move it along:

* the *writer* commits submitted messages in groups (one fsync for every message that arrived while
  the previous commit ran), which keeps many concurrent callbacks cheap;
* the *sender* signs each message just before it sends it (fresh unordered timeout, authz wrapping
  when the signer is not the account), records the tx hash and deadline, then broadcasts;
* the *observer* looks each sent tx up: included with code 0 → landed; included with another code
  → dead-lettered with code and log (never counted as landed, never re-sent forever); not found once
  the tx's own timeout has passed → the chain can no longer include it, so it is sent again.

CheckTx rejections are sorted by whether sending again can help: transient ones are retried with
capped backoff, code 19 (already in the mempool cache) means the tx is on its way, anything else is
dead-lettered and logged with its code. Delivery is at least once: a tx is sent again only once its
own timeout has passed (the chain can no longer include the earlier one), so a message lands twice
only if the chain includes a tx after reporting it missing past its timeout.

All sqlite work runs on one dedicated thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from dapi.chain.broadcast import Broadcaster
from dapi.chain.errors import ChainError, ChainNotFound
from dapi.chain.messages import message_class, type_url_of
from dapi.chain.outbox_store import DeadLetter, OutboxRow, OutboxStore, RowFate
from dapi.chain.tx import SignedTx, TxSigner
from dapi.config import OutboxConfig
from dapi.logs import get_logger
from dapi.metrics import Metrics
from dapi.runtime.backoff import Backoff, capped_delay
from dapi.runtime.sqlite import DbThread
from dapi.runtime.tasks import TaskOwner

log = get_logger(__name__)
T = TypeVar("T")

# Cosmos SDK codespace "sdk" codes after which the same message, signed again later, can succeed.
RETRIABLE_SDK_CODES = frozenset({20, 30, 32, 42})  # mempool full, timeout height, wrong sequence, tx timeout
ALREADY_IN_MEMPOOL = 19
UNAUTHORIZED = 4  # signature verification failed: the account number we signed with may be stale
RETRY_BACKOFF_INITIAL = 0.5  # seconds before the first retry of a failed broadcast

class TxSink(Protocol):
    """Where components hand chain messages for signing and broadcast (the outbox; a list in tests)."""

    async def submit(self, msg: Message) -> int | None: ...


class OutboxClosed(RuntimeError):
    """The outbox is stopping or was never opened: the message was not taken."""


class Outbox:
    """Durable queue of chain messages with its sender and observer; implements the broker's TxSink.

    Args:
        path: the sqlite file, created (with its folder) if missing.
        broadcaster: sends signed txs and looks them up; None keeps what is submitted and sends nothing.
        signer_factory: builds the TxSigner (it asks the chain for the account number); awaited before the
            first send, and again after the chain refuses a signature. None: read-only, as without a broadcaster.
        settings: the ``outbox`` config section (tx validity, poll interval, retry cap, sends in flight);
            None takes its defaults.
        metrics: where depth, landed txs, retries and failures are counted; None counts nothing.
    """

    def __init__(
        self,
        path: Path,
        *,
        broadcaster: Broadcaster | None,
        signer_factory: Callable[[], Awaitable[TxSigner]] | None,
        settings: OutboxConfig | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = path
        self.broadcaster = broadcaster
        self._signer_factory = signer_factory
        self.settings = settings or OutboxConfig.model_validate({})
        self.metrics = metrics
        self._thread = DbThread("outbox-db", "outbox", OutboxClosed)
        self._store: OutboxStore | None = None
        self._signer: TxSigner | None = None
        self._intake: asyncio.Queue[tuple[str, Message, asyncio.Future[int]]] = asyncio.Queue()
        self._tasks = TaskOwner("outbox")
        self._wake = asyncio.Event()
        self._in_flight: set[int] = set()
        self._sends = TaskOwner("outbox-sends")
        self._accepting = False
        self._drained = asyncio.Event()  # set while nothing accepted is waiting for its commit
        self._drained.set()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def can_send(self) -> bool:
        return self.broadcaster is not None and self._signer_factory is not None

    async def open(self) -> None:
        self._thread.open()
        self._store = await self._db(OutboxStore, self.path)
        self._accepting = True
        self._tasks.supervise(self._writer_loop, "outbox-writer", backoff=Backoff(1.0, 1.0))

    async def start(self) -> None:
        """Start sending; without a signer the outbox keeps what it holds and sends nothing."""
        if self._store is None:
            await self.open()
        await self._refresh_depth()
        if not self.can_send:
            log.warning("outbox is read-only: no signer key, nothing will be broadcast")
            return
        self._tasks.supervise(self._sender_loop, "outbox-sender", backoff=Backoff(1.0, 1.0))
        self._tasks.supervise(self._observer_loop, "outbox-observer", backoff=Backoff(1.0, 1.0))

    async def stop(self) -> None:
        """Stop intake, commit everything already accepted, then stop sending; the file stays consistent."""
        self._accepting = False
        # Everything already accepted gets its commit (and its caller its answer) before we stop.
        if self._tasks.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 10.0)
        # Broadcasts in flight are cut: their rows are recorded as sent (or still pending) and the next
        # start looks them up or sends them again, so nothing is lost.
        await self._tasks.stop()
        await self._sends.stop()
        if self._store is not None:
            await self._db(self._store.close)
            self._store = None
        self._thread.close()

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._thread.run(fn, *args)

    def _store_or_raise(self) -> OutboxStore:
        if self._store is None:
            raise OutboxClosed("the outbox is not open")
        return self._store

    # -- intake ----------------------------------------------------------------------------------

    async def submit(self, msg: Message) -> int:
        """Return once the message is committed to disk; its row id identifies it from then on."""
        return (await self.submit_many([msg]))[0]

    async def submit_many(self, msgs: Iterable[Message]) -> list[int]:
        if not self._accepting:
            raise OutboxClosed("the outbox is not accepting messages (stopping or not open)")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[int]] = []
        for msg in msgs:
            future: asyncio.Future[int] = loop.create_future()
            # Serialising a 100k-nonce batch takes a few ms; it happens on the writer thread instead.
            self._intake.put_nowait((type_url_of(msg), msg, future))
            self._drained.clear()
            futures.append(future)
        return list(await asyncio.gather(*futures))

    async def _writer_loop(self) -> None:
        store = self._store_or_raise()
        while True:
            first = await self._intake.get()
            batch = [first]
            while not self._intake.empty():
                batch.append(self._intake.get_nowait())
            try:
                ids = await self._db(
                    lambda b=batch: store.insert_many((url, msg.SerializeToString()) for url, msg, _ in b)
                )
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                raise
            finally:
                if self._intake.empty():
                    self._drained.set()
            for (_, _, future), row_id in zip(batch, ids, strict=True):
                if not future.done():
                    future.set_result(row_id)
            if self.metrics:
                self.metrics.outbox_depth.inc(len(ids))
            self._wake.set()

    # -- sender ----------------------------------------------------------------------------------

    async def _get_signer(self) -> TxSigner:
        if self._signer is None:
            assert self._signer_factory is not None
            self._signer = await self._signer_factory()
        return self._signer

    def _backoff(self, attempts: int) -> float:
        return capped_delay(attempts + 1, RETRY_BACKOFF_INITIAL, self.settings.retry_backoff_max)

    async def _sender_loop(self) -> None:
        store = self._store_or_raise()
        limiter = asyncio.Semaphore(self.settings.max_in_flight)
        while True:
            self._wake.clear()
            free = self.settings.max_in_flight - len(self._in_flight)
            rows = await self._db(store.due, time.time(), free, set(self._in_flight)) if free > 0 else []
            for row_id, type_url, body, attempts in rows:
                self._in_flight.add(row_id)
                send = self._send_one(limiter, row_id, type_url, body, attempts)
                task = self._sends.spawn(send, f"outbox-send-{row_id}")
                task.add_done_callback(functools.partial(self._sent_done, row_id))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)

    def _sent_done(self, row_id: int, _task: asyncio.Task[None] | None = None) -> None:
        self._in_flight.discard(row_id)
        self._wake.set()

    async def _send_one(self, limiter: asyncio.Semaphore, row_id: int, type_url: str, body: bytes,
                        attempts: int) -> None:
        async with limiter:
            try:
                await self._send(row_id, type_url, body, attempts)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("sending an outbox message failed unexpectedly", row=row_id)
                await self._db(self._store_or_raise().retry_later, row_id, time.time() + self._backoff(attempts),
                               repr(exc))

    async def _send(self, row_id: int, type_url: str, body: bytes, attempts: int) -> None:
        store = self._store_or_raise()
        assert self.broadcaster is not None
        try:
            signer = await self._get_signer()
        except ChainError as exc:
            log.warning("cannot sign yet: signer account unavailable", error=str(exc))
            await self._db(store.retry_later, row_id, time.time() + self._backoff(attempts), str(exc))
            return
        msg = message_class(type_url).FromString(body)
        signed: SignedTx = await asyncio.to_thread(signer.sign, [msg])
        assert signed.timeout_timestamp_ns is not None
        grace = min(5.0, self.settings.tx_timeout)
        deadline = signed.timeout_timestamp_ns / 1e9 + grace
        # Record the hash first: if the process dies right after the broadcast, the observer still
        # knows what to look for, and re-sends only once that tx can no longer be included.
        await self._db(store.mark_sent, row_id, signed.hash, deadline)
        try:
            result = await self.broadcaster.broadcast(signed.raw)
        except ChainError as exc:
            log.warning("broadcast failed; will retry", row=row_id, type_url=type_url, error=str(exc))
            if self.metrics:
                self.metrics.tx_retries.inc()
            await self._db(store.retry_later, row_id, time.time() + self._backoff(attempts), str(exc))
            return
        codespace = result.codespace or "sdk"
        if result.code == 0 or (codespace == "sdk" and result.code == ALREADY_IN_MEMPOOL):
            log.debug("tx broadcast", row=row_id, tx_hash=signed.hash, type_url=type_url)
            return
        if codespace == "sdk" and result.code == UNAUTHORIZED and attempts == 0:
            # The account number may have changed (a re-created account); ask again before giving up.
            self._signer = None
            await self._db(store.retry_later, row_id, time.time(), f"code {result.code}: {result.log}")
            return
        if codespace == "sdk" and result.code in RETRIABLE_SDK_CODES:
            log.warning("tx rejected for now; will retry", row=row_id, code=result.code, log_text=result.log)
            if self.metrics:
                self.metrics.tx_retries.inc()
            await self._db(store.retry_later, row_id, time.time() + self._backoff(attempts),
                           f"code {result.code}: {result.log}")
            return
        log.error("tx rejected; dead-lettered", row=row_id, type_url=type_url, code=result.code,
                  codespace=codespace, log_text=result.log)
        await self._dead(row_id, "checktx", result.code, codespace, result.log)

    async def _dead(self, row_id: int, stage: str, code: int, codespace: str, log_text: str) -> None:
        await self._db(self._store_or_raise().dead_letter, row_id, stage, code, codespace, log_text)
        if self.metrics:
            self.metrics.tx_failures.labels(stage=stage, code=str(code)).inc()
            self.metrics.outbox_depth.dec()

    # -- observer --------------------------------------------------------------------------------

    async def _observer_loop(self) -> None:
        store = self._store_or_raise()
        while True:
            rows = await self._db(store.sent, 1000)
            if rows:
                await asyncio.gather(*(self._observe(*row) for row in rows))
            await asyncio.sleep(self.settings.poll_interval)

    async def _observe(self, row_id: int, type_url: str, tx_hash: str, deadline: float) -> None:
        store = self._store_or_raise()
        assert self.broadcaster is not None
        try:
            found = await self.broadcaster.get_tx(tx_hash)
        except ChainNotFound:
            if time.time() > deadline:
                log.warning("tx not included before its timeout; sending again", row=row_id, tx_hash=tx_hash)
                if self.metrics:
                    self.metrics.tx_retries.inc()
                await self._db(store.retry_later, row_id, 0.0, "not included before timeout")
                self._wake.set()
            return
        except ChainError as exc:
            log.debug("tx lookup failed; will look again", row=row_id, error=str(exc))
            return
        if found.code == 0:
            await self._db(store.mark_landed, row_id, found.height)
            if self.metrics:
                self.metrics.txs_landed.labels(type=type_url.rsplit(".", 1)[-1]).inc()
                self.metrics.outbox_depth.dec()
            return
        log.error("tx failed in its block; dead-lettered", row=row_id, tx_hash=tx_hash, code=found.code,
                  codespace=found.codespace, log_text=found.log, height=found.height)
        await self._dead(row_id, "deliver", found.code, found.codespace, found.log)

    # -- views -----------------------------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        return await self._db(self._store_or_raise().counts)

    async def pending(self, limit: int = 100) -> list[OutboxRow]:
        return await self._db(self._store_or_raise().rows, ("pending", "sent"), limit)

    async def landed(self, limit: int = 1000) -> list[OutboxRow]:
        return await self._db(self._store_or_raise().rows, ("landed",), limit)

    async def fates(self, row_ids: Iterable[int]) -> dict[int, RowFate]:
        """Where each of these submitted messages is now (landed rows keep their tx hash for a result lookup)."""
        ids = list(row_ids)
        return await self._db(self._store_or_raise().fates, ids)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self._db(self._store_or_raise().dead_letters, limit)

    async def _refresh_depth(self) -> None:
        if self.metrics:
            counts = await self.counts()
            self.metrics.outbox_depth.set(counts["pending"] + counts["sent"])
