"""The durable inference-validation queue: sqlite in ``data_dir``, beside the outbox.

Every inference the sampler selects is committed here, together with the height the scan reached, in one
transaction, before anything else happens; so a restart (even a SIGKILL) neither loses a selected
validation nor scans a height twice. A row then moves on:

``queued`` (waiting for a free node; ``attempts``/``next_attempt_at`` hold its backoff) → ``sent`` (the
MsgValidation is in the outbox, ``outbox_row`` names it) → ``landed`` (included with code 0); or ``gone``
(the chain no longer has the inference: nothing to validate) or ``abandoned`` (its epoch's claim was
already sent, so a late validation could not change what the epoch pays; kept for the record).

The ``claims`` table holds each epoch's reward claim as the claim gate sees it: ``waiting`` for the
epoch's required validations, ``sent`` (in the outbox), then ``landed`` with the chain's
``MsgClaimRewardsResponse`` (amount and result) or ``dead`` with the tx code and log.

Synchronous sqlite on one dedicated thread (:class:`ValidationQueue` wraps it), never on the event loop.
The file is private to the daemon's user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dapi.runtime.sqlite import DbThread, open_private_db

__all__ = ["ClaimRow", "Selected", "ValidationQueue", "ValidationStore", "WorkItem"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS validations (
    inference_id TEXT NOT NULL,
    revalidation INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    model TEXT NOT NULL,
    required INTEGER NOT NULL,          -- the chain's claim-time check will ask for it (inference.md §4.5)
    threshold REAL,                     -- the model's validation_threshold in that epoch; NULL: unknown
    found_at INTEGER NOT NULL,          -- height of the event that selected it
    state TEXT NOT NULL,                -- queued | sent | landed | gone | abandoned
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    outbox_row INTEGER,
    value REAL,
    PRIMARY KEY (inference_id, revalidation)
);
CREATE INDEX IF NOT EXISTS validations_due ON validations (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS scan (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    height INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    epoch INTEGER PRIMARY KEY,
    opened_at INTEGER NOT NULL,         -- the height the claim became due (claim money)
    deadline INTEGER NOT NULL,          -- from this height the claim goes out even with validations missing
    state TEXT NOT NULL,                -- waiting | sent | landed | dead
    forced INTEGER NOT NULL DEFAULT 0,  -- sent with required validations still missing
    missing INTEGER NOT NULL DEFAULT 0, -- how many were missing when it was sent
    outbox_row INTEGER,
    code INTEGER,
    amount INTEGER,
    result TEXT
);
"""


@dataclass(frozen=True, slots=True)
class Selected:
    """An inference the sampler chose, as it is recorded."""

    inference_id: str
    epoch: int
    model: str
    required: bool
    threshold: float | None
    found_at: int
    revalidation: bool = False


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A queued validation due to run now."""

    inference_id: str
    revalidation: bool
    epoch: int
    model: str
    threshold: float | None
    attempts: int


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """One epoch's reward claim as the claim gate tracks it."""

    epoch: int
    opened_at: int
    deadline: int
    state: str
    forced: bool
    missing: int
    outbox_row: int | None
    code: int | None
    amount: int | None
    result: str | None

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "state": self.state, "code": self.code, "amount": self.amount,
                "result": self.result, "forced": self.forced, "missing_validations": self.missing}


class ValidationStore:
    """Synchronous sqlite access; only ever called on the queue's own thread."""

    def __init__(self, path: Path) -> None:
        self.db = open_private_db(path, _SCHEMA)  # FULL sync: a selection is on disk before the scan moves on

    def close(self) -> None:
        self.db.close()

    # -- the scan and what it selects --

    def scanned(self) -> int | None:
        row = self.db.execute("SELECT height FROM scan WHERE id = 1").fetchone()
        return None if row is None else int(row[0])

    def record(self, selected: Iterable[Selected], scanned_to: int) -> int:
        """Insert the selections (a known one is kept as it is) and move the scan, in one transaction."""
        added = 0
        with self.db:
            self.db.execute("BEGIN")
            for s in selected:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO validations (inference_id, revalidation, epoch, model, required, threshold,"
                    " found_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued')",
                    (s.inference_id, int(s.revalidation), s.epoch, s.model, int(s.required), s.threshold, s.found_at),
                )
                added += cur.rowcount
            self.db.execute("INSERT INTO scan (id, height) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET height ="
                            " excluded.height", (scanned_to,))
        return added

    # -- running them --

    def due(self, now: float, limit: int, exclude: Iterable[tuple[str, bool]]) -> list[WorkItem]:
        skip = set(exclude)
        rows = self.db.execute(
            "SELECT inference_id, revalidation, epoch, model, threshold, attempts FROM validations"
            " WHERE state = 'queued' AND next_attempt_at <= ? ORDER BY required DESC, found_at LIMIT ?",
            (now, limit + len(skip)),
        ).fetchall()
        items = [WorkItem(r[0], bool(r[1]), r[2], r[3], r[4], r[5]) for r in rows]
        return [i for i in items if (i.inference_id, i.revalidation) not in skip][:limit]

    def next_due_at(self) -> float | None:
        row = self.db.execute("SELECT MIN(next_attempt_at) FROM validations WHERE state = 'queued'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def retry_later(self, inference_id: str, revalidation: bool, when: float, error: str) -> None:
        self.db.execute(
            "UPDATE validations SET state = 'queued', attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
            " WHERE inference_id = ? AND revalidation = ?", (when, error, inference_id, int(revalidation)))

    def mark_sent(self, inference_id: str, revalidation: bool, outbox_row: int, value: float) -> None:
        self.db.execute(
            "UPDATE validations SET state = 'sent', outbox_row = ?, value = ?, last_error = NULL"
            " WHERE inference_id = ? AND revalidation = ?", (outbox_row, value, inference_id, int(revalidation)))

    def set_state(self, inference_id: str, revalidation: bool, state: str, error: str = "") -> None:
        self.db.execute("UPDATE validations SET state = ?, last_error = ? WHERE inference_id = ? AND revalidation = ?",
                        (state, error or None, inference_id, int(revalidation)))

    def in_flight(self) -> list[tuple[str, bool, int]]:
        rows = self.db.execute(
            "SELECT inference_id, revalidation, outbox_row FROM validations WHERE state = 'sent'").fetchall()
        return [(r[0], bool(r[1]), int(r[2])) for r in rows]

    def abandon_epoch(self, epoch: int, reason: str) -> int:
        cur = self.db.execute(
            "UPDATE validations SET state = 'abandoned', last_error = ? WHERE epoch = ? AND state = 'queued'"
            " AND revalidation = 0", (reason, epoch))
        return cur.rowcount

    # -- what status and the claim gate read --

    def counts(self) -> dict[str, int]:
        """Totals over all rows: selected, pending, sent, landed, failed (value not above the threshold)."""
        row = self.db.execute(
            "SELECT COUNT(*),"
            " SUM(state IN ('queued', 'sent')),"
            " SUM(outbox_row IS NOT NULL),"
            " SUM(state = 'landed'),"
            " SUM(outbox_row IS NOT NULL AND threshold IS NOT NULL AND value <= threshold),"
            " SUM(state = 'gone'), SUM(state = 'abandoned'), SUM(state = 'queued' AND attempts > 0)"
            " FROM validations").fetchone()
        keys = ("selected", "pending", "sent", "landed", "failed", "gone", "abandoned", "waiting_for_node")
        return {k: int(v or 0) for k, v in zip(keys, row, strict=True)}

    def epoch_counts(self, epoch: int) -> dict[str, int]:
        """One epoch's sampled validations (revalidations are not part of the claim check)."""
        row = self.db.execute(
            "SELECT SUM(required), SUM(outbox_row IS NOT NULL), SUM(state = 'landed'),"
            " SUM(outbox_row IS NOT NULL AND threshold IS NOT NULL AND value <= threshold),"
            " SUM(required AND state IN ('queued', 'sent')), COUNT(*)"
            " FROM validations WHERE epoch = ? AND revalidation = 0", (epoch,)).fetchone()
        keys = ("required", "sent", "landed", "failed", "required_pending", "selected")
        return {k: int(v or 0) for k, v in zip(keys, row, strict=True)}

    def latest_epoch(self) -> int | None:
        row = self.db.execute("SELECT MAX(epoch) FROM validations WHERE revalidation = 0").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # -- claims --

    _CLAIM_COLUMNS = "epoch, opened_at, deadline, state, forced, missing, outbox_row, code, amount, result"

    @staticmethod
    def _claim_row(row: tuple[Any, ...]) -> ClaimRow:
        return ClaimRow(row[0], row[1], row[2], row[3], bool(row[4]), *row[5:])

    def claim(self, epoch: int) -> ClaimRow | None:
        row = self.db.execute(f"SELECT {self._CLAIM_COLUMNS} FROM claims WHERE epoch = ?", (epoch,)).fetchone()
        return None if row is None else self._claim_row(row)

    def claims(self, states: tuple[str, ...]) -> list[ClaimRow]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(f"SELECT {self._CLAIM_COLUMNS} FROM claims WHERE state IN ({marks}) ORDER BY epoch",
                               states).fetchall()
        return [self._claim_row(row) for row in rows]

    def last_claim(self) -> ClaimRow | None:
        row = self.db.execute("SELECT MAX(epoch) FROM claims WHERE state != 'waiting'").fetchone()
        return None if row is None or row[0] is None else self.claim(int(row[0]))

    def open_claim(self, epoch: int, opened_at: int, deadline: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO claims (epoch, opened_at, deadline, state) VALUES (?, ?, ?, 'waiting')",
                        (epoch, opened_at, deadline))

    def claim_sent(self, epoch: int, outbox_row: int | None, forced: bool, missing: int) -> None:
        self.db.execute(
            "INSERT INTO claims (epoch, opened_at, deadline, state) VALUES (?, 0, 0, 'sent')"
            " ON CONFLICT(epoch) DO UPDATE SET state = 'sent'", (epoch,))
        self.db.execute("UPDATE claims SET outbox_row = ?, forced = ?, missing = ? WHERE epoch = ?",
                        (outbox_row, int(forced), missing, epoch))

    def claim_result(self, epoch: int, state: str, code: int, amount: int, result: str) -> None:
        self.db.execute("UPDATE claims SET state = ?, code = ?, amount = ?, result = ? WHERE epoch = ?",
                        (state, code, amount, result, epoch))


class ValidationQueue:
    """The store behind one thread: every method is a coroutine that runs the sqlite work off the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = DbThread("validations-db", "validation queue")
        self.store: ValidationStore | None = None

    async def open(self) -> None:
        self._thread.open()
        self.store = await self.run(ValidationStore, self.path)

    async def close(self) -> None:
        if self.store is not None:
            await self.run(self.store.close)
            self.store = None
        self._thread.close()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._thread.run(fn, *args)

    @property
    def s(self) -> ValidationStore:
        """The store, for ``await queue.run(queue.s.<method>, ...)``."""
        if self.store is None:
            raise RuntimeError("the validation queue is not open")
        return self.store
