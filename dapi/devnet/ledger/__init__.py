"""The devnet's ledger: the simulated chain's state machine, split along the Cosmos SDK's seams.

Modules, bottom up: `codes` (result codes, codespaces, `TxFailure`), `records` (accounts, tx results,
blocks, claims, epoch reports, the height-versioned store), `state` (the inference module's store),
`handlers` (the msg server: message rules at block time), `ante` (CheckTx's checks), `deliver` (a tx's
messages in a block, all or nothing), `endblock` (the EndBlock stages: PoC start, epoch formation, new
validators, settlement), and `ledger` (`Ledger`: holds the state, makes blocks, answers reads).
"""

from __future__ import annotations

from dapi.devnet.ledger.codes import CODESPACE_INFERENCE, CODESPACE_SDK, InferenceCode, SdkCode
from dapi.devnet.ledger.ledger import Ledger
from dapi.devnet.ledger.records import (
    Account,
    Block,
    CheckTxResult,
    ClaimRecord,
    EpochReport,
    MemberReport,
    NodeReport,
    TxEvent,
    TxRecord,
    rfc3339,
    valid_address,
)

__all__ = [
    "CODESPACE_INFERENCE",
    "CODESPACE_SDK",
    "Account",
    "Block",
    "CheckTxResult",
    "ClaimRecord",
    "EpochReport",
    "InferenceCode",
    "Ledger",
    "MemberReport",
    "NodeReport",
    "SdkCode",
    "TxEvent",
    "TxRecord",
    "rfc3339",
    "valid_address",
]
