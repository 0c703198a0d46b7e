"""Split a PoC batch into messages whose transactions fit the chain's size limit.

A 100,000-nonce batch is a ~1.3 MB MsgSubmitPocBatch; CometBFT's mempool refuses a tx over its
``max_tx_bytes`` (1 MiB by default) at CheckTx with code 21, after the ML node was told its batch was
accepted. So a batch that cannot fit is split into several messages of the same stage and node, each
with its own batch id, before anything is answered; only what no split can fit is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from dapi.config import DEFAULT_MAX_TX_BYTES
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch

__all__ = ["DEFAULT_MAX_TX_BYTES", "TX_ENVELOPE_BYTES", "BatchTooLarge", "split_batch"]

# What a signed tx adds around its one message: TxBody (Any type URL, authz MsgExec with its grantee,
# memo, timeout), AuthInfo (public key, sign mode, fee, gas) and the 64-byte signature. Measured at a
# few hundred bytes; the margin keeps a split message well inside the limit.
TX_ENVELOPE_BYTES = 2048


class BatchTooLarge(ValueError):
    """Not even one nonce of the batch fits a transaction under the limit."""


def split_batch(
    msg: MsgSubmitPocBatch, *, max_tx_bytes: int = DEFAULT_MAX_TX_BYTES, new_batch_id: Callable[[], str]
) -> list[MsgSubmitPocBatch]:
    """``msg`` itself if it fits; else consecutive slices of its nonces (and distances), in order.

    Every slice keeps the creator, stage and node id and gets ``new_batch_id()``. The slices are as
    few as halving allows: a batch twice the limit becomes about four messages, not one per nonce.
    """
    limit = max_tx_bytes - TX_ENVELOPE_BYTES
    if limit <= 0:
        raise BatchTooLarge(f"max_tx_bytes {max_tx_bytes} leaves no room for a message")
    if msg.ByteSize() <= limit:
        return [msg]
    parts: list[MsgSubmitPocBatch] = []
    pending = [(0, len(msg.nonces))]
    while pending:
        start, end = pending.pop()
        # Sized with the original id (ids are UUIDs, all one length); a slice gets its own id only once it fits.
        part = MsgSubmitPocBatch(
            creator=msg.creator, poc_stage_start_block_height=msg.poc_stage_start_block_height,
            batch_id=msg.batch_id, nonces=msg.nonces[start:end], dist=msg.dist[start:end], node_id=msg.node_id,
        )
        if part.ByteSize() <= limit:
            part.batch_id = new_batch_id()
            parts.append(part)
            continue
        if end - start <= 1:
            raise BatchTooLarge(f"one nonce makes a {part.ByteSize()}-byte message, over the {limit}-byte room")
        middle = (start + end) // 2
        pending.extend(((middle, end), (start, middle)))  # popped first half first: order is kept
    return parts
