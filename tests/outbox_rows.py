"""What an outbox file holds: its messages, decoded, in the order they were accepted."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch, MsgSubmitPocValidation

_CLASSES: dict[str, type[MsgSubmitPocBatch] | type[MsgSubmitPocValidation]] = {
    "/inference.inference.MsgSubmitPocBatch": MsgSubmitPocBatch,
    "/inference.inference.MsgSubmitPocValidation": MsgSubmitPocValidation,
}


def stored(path: Path) -> list[Any]:
    """The PoC batch and validation messages committed to the outbox at ``path``."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type_url, body FROM messages ORDER BY id").fetchall()
    return [_CLASSES[url].FromString(body) for url, body in rows]
