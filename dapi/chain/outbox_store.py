"""The outbox's sqlite file: what was accepted, what was sent under which hash, what landed or died.

Synchronous on purpose: the outbox calls it only on its own thread, never on the event loop. The file
is private to the daemon's user (0600, its -wal and -shm files too).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from dapi.chain.messages import message_class
from dapi.runtime.sqlite import open_private_db

__all__ = ["LANDED_KEPT", "DeadLetter", "OutboxRow", "OutboxStore", "RowFate"]

LANDED_KEPT = 7 * 24 * 3600.0  # seconds a landed row is kept for inspection before it is pruned

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type_url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,               -- pending | sent | landed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    tx_hash TEXT,
    deadline REAL,
    height INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS messages_state ON messages (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    type_url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    stage TEXT NOT NULL,               -- checktx | deliver
    code INTEGER NOT NULL,
    codespace TEXT NOT NULL,
    log TEXT NOT NULL,
    tx_hash TEXT,
    attempts INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A message in the outbox as the admin view lists it: state, attempts, tx hash, height and last error."""

    id: int
    type_url: str
    state: str
    attempts: int
    created_at: float
    tx_hash: str | None
    height: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the chain rejected for good (at CheckTx or in a block), with its code and log and its body."""

    id: int
    type_url: str
    stage: str
    code: int
    codespace: str
    log: str
    tx_hash: str | None
    attempts: int
    created_at: float
    failed_at: float
    body: bytes

    def message(self) -> Message:
        return message_class(self.type_url).FromString(self.body)


@dataclass(frozen=True, slots=True)
class RowFate:
    """Where one submitted message is: pending, sent, landed (with its tx hash and height) or dead (code, log)."""

    id: int
    state: str  # pending | sent | landed | dead | unknown (pruned, or never this outbox's)
    tx_hash: str | None = None
    height: int | None = None
    code: int = 0
    log: str = ""


class OutboxStore:
    """Synchronous sqlite access; only ever called on the outbox's own thread."""

    def __init__(self, path: Path) -> None:
        # Pending transactions are the daemon's alone (0600). FULL sync: a commit is on disk before
        # submit() returns, so even power loss keeps answered batches.
        self.db = open_private_db(path, _SCHEMA)
        # Landed rows are kept (bodies emptied) for the admin view and the devnet's checks; a week is plenty.
        self.db.execute("DELETE FROM messages WHERE state = 'landed' AND created_at < ?", (time.time() - LANDED_KEPT,))

    def close(self) -> None:
        self.db.close()

    def insert_many(self, rows: Iterable[tuple[str, bytes]]) -> list[int]:
        now = time.time()
        ids: list[int] = []
        with self.db:
            self.db.execute("BEGIN")
            for type_url, body in rows:
                cur = self.db.execute(
                    "INSERT INTO messages (type_url, body, created_at, state) VALUES (?, ?, ?, 'pending')",
                    (type_url, body, now),
                )
                ids.append(int(cur.lastrowid or 0))
        return ids

    def due(self, now: float, limit: int, exclude: Iterable[int]) -> list[tuple[int, str, bytes, int]]:
        skip = set(exclude)
        rows = self.db.execute(
            "SELECT id, type_url, body, attempts FROM messages WHERE state = 'pending' AND next_attempt_at <= ?"
            " ORDER BY id LIMIT ?",
            (now, limit + len(skip)),
        ).fetchall()
        return [r for r in rows if r[0] not in skip][:limit]

    def mark_sent(self, row_id: int, tx_hash: str, deadline: float) -> None:
        self.db.execute(
            "UPDATE messages SET state = 'sent', tx_hash = ?, deadline = ?, attempts = attempts + 1 WHERE id = ?",
            (tx_hash, deadline, row_id),
        )

    def retry_later(self, row_id: int, when: float, error: str) -> None:
        self.db.execute(
            "UPDATE messages SET state = 'pending', next_attempt_at = ?, last_error = ?, tx_hash = NULL WHERE id = ?",
            (when, error, row_id),
        )

    def mark_landed(self, row_id: int, height: int) -> None:
        # The body is no longer needed once the chain has it; PoC batches can be megabytes.
        self.db.execute(
            "UPDATE messages SET state = 'landed', height = ?, body = X'' WHERE id = ?", (height, row_id)
        )

    def dead_letter(self, row_id: int, stage: str, code: int, codespace: str, log_text: str) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO dead_letters (id, type_url, body, created_at, failed_at, stage, code, codespace, log,"
                " tx_hash, attempts) SELECT id, type_url, body, created_at, ?, ?, ?, ?, ?, tx_hash, attempts"
                " FROM messages WHERE id = ?",
                (time.time(), stage, code, codespace, log_text, row_id),
            )
            self.db.execute("DELETE FROM messages WHERE id = ?", (row_id,))

    def sent(self, limit: int) -> list[tuple[int, str, str, float]]:
        return self.db.execute(
            "SELECT id, type_url, tx_hash, deadline FROM messages WHERE state = 'sent' ORDER BY id LIMIT ?", (limit,)
        ).fetchall()

    def counts(self) -> dict[str, int]:
        counts = dict(self.db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state").fetchall())
        counts["dead"] = self.db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        return {state: int(counts.get(state, 0)) for state in ("pending", "sent", "landed", "dead")}

    def rows(self, states: tuple[str, ...], limit: int) -> list[OutboxRow]:
        marks = ",".join("?" * len(states))
        found = self.db.execute(
            f"SELECT id, type_url, state, attempts, created_at, tx_hash, height, last_error FROM messages"
            f" WHERE state IN ({marks}) ORDER BY id LIMIT ?",
            (*states, limit),
        ).fetchall()
        return [OutboxRow(*row) for row in found]

    def fates(self, ids: Iterable[int]) -> dict[int, RowFate]:
        wanted = list(dict.fromkeys(ids))
        found: dict[int, RowFate] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row_id, state, tx_hash, height in self.db.execute(
                    f"SELECT id, state, tx_hash, height FROM messages WHERE id IN ({marks})", chunk):
                found[row_id] = RowFate(row_id, state, tx_hash, height)
            for row_id, tx_hash, code, log_text in self.db.execute(
                    f"SELECT id, tx_hash, code, log FROM dead_letters WHERE id IN ({marks})", chunk):
                found[row_id] = RowFate(row_id, "dead", tx_hash, None, code, log_text)
        return {row_id: found.get(row_id, RowFate(row_id, "unknown")) for row_id in wanted}

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        found = self.db.execute(
            "SELECT id, type_url, stage, code, codespace, log, tx_hash, attempts, created_at, failed_at, body"
            " FROM dead_letters ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(*row) for row in found]
