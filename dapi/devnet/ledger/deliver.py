"""DeliverTx, as the SDK's baseapp runs a tx in a block: every message through its handler, all or nothing.

`deliver_tx` runs the tx's effective messages (MsgExec unwrapped) through `handlers.handle` in the
block `ctx` describes, each one seeing what the ones before it wrote (like the SDK's cached store). If
one fails, nothing the tx would have written is written (a tx of several messages is undone from a
snapshot of the module's store) and the tx's result is that failure's code, with the position of the
failing message in the log; otherwise the result carries TxMsgData (one response per top-level
message), the message events and, after each message's event, the module events its handler emitted
(`inference_finished`, ...).
"""

from __future__ import annotations

import base64

from google.protobuf.message import Message

from dapi.chain.messages import pack_any, type_url_of
from dapi.chain.tx import DecodedTx
from dapi.devnet.ledger.codes import CODESPACE_SDK, TxFailure
from dapi.devnet.ledger.context import BlockContext
from dapi.devnet.ledger.handlers import handle
from dapi.devnet.ledger.records import TxEvent, TxRecord, rfc3339
from dapi.devnet.ledger.state import InferenceState
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExec, MsgExecResponse
from dapi.gen.cosmos.base.abci.v1beta1.abci_pb2 import TxMsgData
from dapi.logs import get_logger

__all__ = ["deliver_tx"]

log = get_logger(__name__)

_MSG_EXEC_URL = type_url_of(MsgExec)


def deliver_tx(
    state: InferenceState, tx: DecodedTx, raw: bytes, hash_hex: str, *, ctx: BlockContext, index: int
) -> TxRecord:
    """Apply one tx in the block `ctx` describes (its `index` in the block) and return its result record."""
    height, block_time = ctx.height, ctx.time_ns
    events = [
        TxEvent("tx", (("fee", ""), ("fee_payer", tx.signer_address))),
        TxEvent("tx", (("acc_seq", f"{tx.signer_address}/{tx.sequence}"),)),
        TxEvent("tx", (("signature", base64.b64encode(tx.signatures[0]).decode()),)),
    ]
    code, codespace, text, data = 0, "", "", b""
    emitted: list[list[TxEvent]] = []
    responses: list[Message] = []
    # A single message needs no undo: its effect runs only once it passed.
    snapshot = state.snapshot() if len(tx.effective_messages) > 1 else None
    for position, em in enumerate(tx.effective_messages):
        try:
            effect, response = handle(state, em.type_url, em.message, ctx)
        except TxFailure as failure:
            code, codespace = failure.code, failure.codespace
            text = f"failed to execute message; message index: {position}: {failure.log}"
            break
        except Exception:
            log.exception("devnet message handler failed unexpectedly", tx=hash_hex)
            code, codespace, text = 1, CODESPACE_SDK, f"failed to execute message; message index: {position}"
            break
        emitted.append(list(effect() or ()))
        responses.append(response)
    if code != 0 and snapshot is not None and emitted:
        state.restore(snapshot)
    if code == 0:
        data = _msg_data(tx, responses).SerializeToString()
        position = 0
        for packed, message in zip(tx.body.messages, tx.messages, strict=True):
            module = "authz" if packed.type_url == _MSG_EXEC_URL else "inference"
            events.append(TxEvent("message", (("action", packed.type_url), ("sender", tx.signer_address),
                                              ("module", module))))
            if isinstance(message, MsgExec):
                for inner in message.msgs:
                    events.append(TxEvent("message", (("action", inner.type_url), ("module", "inference"),
                                                      ("sender", message.grantee))))
                    events.extend(emitted[position])
                    position += 1
            else:
                events.extend(emitted[position])
                position += 1
    return TxRecord(
        hash=hash_hex,
        height=height,
        index=index,
        raw=raw,
        code=code,
        log=text,
        codespace=codespace,
        data=data,
        gas_wanted=tx.gas_limit,
        gas_used=min(tx.gas_limit, 40_000 + 10 * len(raw)) if tx.gas_limit else 0,
        timestamp=rfc3339(block_time),
        events=tuple(events),
        signer=tx.signer_address,
        message_types=tuple(em.type_url for em in tx.effective_messages),
    )


def _msg_data(tx: DecodedTx, responses: list[Message]) -> TxMsgData:
    """TxMsgData with one response per top-level message (a MsgExec's wraps its inner responses)."""
    packed = []
    position = 0
    for message in tx.messages:
        if isinstance(message, MsgExec):
            inner = responses[position:position + len(message.msgs)]
            position += len(message.msgs)
            packed.append(pack_any(MsgExecResponse(results=[r.SerializeToString() for r in inner])))
        else:
            packed.append(pack_any(responses[position]))
            position += 1
    return TxMsgData(msg_responses=packed)
